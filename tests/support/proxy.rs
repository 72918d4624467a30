//! A TCP proxy that answers with RST on demand, to reproduce "connection reset by peer" the way
//! the seed's logs show it: `SO_LINGER 0` on close sends a reset instead of a FIN.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards `127.0.0.1:port` to an upstream address.
pub struct ResetProxy {
    pub addr: SocketAddr,
    refuse: Arc<AtomicBool>,
    upstream: Arc<Mutex<SocketAddr>>,
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    /// Connections being forwarded now (ended when either side closes).
    open: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ResetProxy {
    pub async fn start(upstream: SocketAddr) -> ResetProxy {
        Self::start_sync(upstream)
    }

    /// As [`ResetProxy::start`], from a thread inside the runtime that is not a task (e.g.
    /// `spawn_blocking`).
    pub fn start_sync(upstream: SocketAddr) -> ResetProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let refuse = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (generation, _) = watch::channel(0u64);
        let upstream = Arc::new(Mutex::new(upstream));
        let (r, a, g, u, o) = (
            refuse.clone(),
            accepted.clone(),
            generation.clone(),
            upstream.clone(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::Relaxed);
                if r.load(Ordering::SeqCst) {
                    reset(client);
                    continue;
                }
                let mut gen_rx = g.subscribe();
                let upstream = *u.lock().unwrap();
                let open = o.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        reset(client);
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    let _closed = Decrement(open);
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut up) => {}
                        _ = gen_rx.changed() => {
                            // Forget the connection, as a NAT table or an idle reaper does: the
                            // client learns it from an RST when it next sends.
                            drop(up);
                            let mut byte = [0u8; 1];
                            let _ = tokio::io::AsyncReadExt::read(&mut client, &mut byte).await;
                            reset(client);
                        }
                    }
                });
            }
        });
        ResetProxy {
            addr,
            refuse,
            upstream,
            generation,
            accepted,
            open,
            task,
        }
    }

    /// Forgets every connection open now: each is reset when its client next sends, which is how
    /// "read: connection reset by peer" reaches a client in production.
    pub fn reset_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While on, every new connection is reset right after it is accepted (during the TLS
    /// handshake), and so is every open one.
    pub fn set_refusing(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
        if on {
            self.reset_all();
        }
    }

    /// New connections go to `to`; open ones stay where they are, as a client's connection
    /// stays with the address a DNS name had when it dialled.
    pub fn set_upstream(&self, to: SocketAddr) {
        *self.upstream.lock().unwrap() = to;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections being forwarded now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }
}

/// Counts a forwarded connection out when its task ends, however it ends.
struct Decrement(Arc<AtomicU64>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ResetProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// A TCP proxy inside a network namespace of a [`super::netns::Lab`] that holds every chunk
/// for `delay` in each direction: latency, which `tc netem` would add on a kernel that has it.
pub struct DelayProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `listen_ip` in `ns` (from a thread inside the runtime that is not a task) and
    /// forwards to `upstream`, reached from `ns` too.
    pub fn start_in(
        ns: &str,
        listen_ip: &str,
        upstream: SocketAddr,
        delay: std::time::Duration,
    ) -> DelayProxy {
        let std_listener = super::netns::bind_in(ns, &format!("{listen_ip}:0"));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let ns = ns.to_string();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let ns = ns.clone();
                tokio::spawn(async move {
                    let up = tokio::task::spawn_blocking(move || {
                        super::netns::connect_in(&ns, upstream)
                    })
                    .await;
                    let Ok(Ok(up)) = up else { return };
                    up.set_nonblocking(true).unwrap();
                    let up = TcpStream::from_std(up).unwrap();
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(delayed(cr, uw, delay), delayed(ur, cw, delay));
                });
            }
        });
        DelayProxy { addr, task }
    }
}

async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
