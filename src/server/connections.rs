//! Connections: what keeps the kubelet's probes answered whatever other clients do.
//!
//! The kubelet opens a new connection for every probe and gives up after `timeoutSeconds`
//! (1 s in the shipped manifests); one refused probe can take the pod out of the Service. So a
//! new connection is never refused for being one too many:
//! - at [`MAX_CONNECTIONS`], accepting one more asks the **oldest connection that has already
//!   been answered** to close (a keep-alive client polling for minutes), never one still
//!   waiting for its first answer (the probe that just arrived); an idle one closes at once, a
//!   busy one after its response, and after [`CLOSE_GRACE`] at the latest;
//! - only while [`MAX_CLOSING`] evicted connections are still closing are new ones refused,
//!   which bounds file descriptors;
//! - a write that makes no progress for [`WRITE_TIMEOUT`] (a client that pipelines requests
//!   and never reads its answers) fails the connection, so a stalled client is cut loose;
//! - request heads must arrive within [`HEADER_READ_TIMEOUT`] and fit in 16 KiB;
//! - `/metrics` waits its turn in [`super::scrape::ScrapePacer`]; probes never wait.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either};
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::{AppState, handle};

/// Connections served at once; one more evicts the oldest.
pub const MAX_CONNECTIONS: usize = 256;
/// Evicted connections that may still be closing before new ones are refused.
pub const MAX_CLOSING: usize = 256;
/// Time a client has to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a response write may wait on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an evicted (or, at shutdown, any) connection gets to finish its response.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// What the table holds of one open connection.
#[derive(Clone, Default)]
struct Entry {
    /// Asks the connection to close.
    evict: Arc<Notify>,
    /// Set once the connection has been answered.
    served: Arc<AtomicBool>,
}

/// The open connections, oldest first, and how many evicted ones are still closing.
#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
    closing: usize,
}

impl Table {
    /// Admits a new connection, evicting the oldest answered one when full (the oldest of all
    /// when none has been answered yet); `None` when too many are still closing.
    fn admit(&mut self) -> Option<(u64, Entry)> {
        if self.open.len() >= MAX_CONNECTIONS {
            if self.closing >= MAX_CLOSING {
                return None;
            }
            let victim = self
                .open
                .iter()
                .find(|(_, e)| e.served.load(Ordering::Relaxed))
                .or_else(|| self.open.iter().next())
                .map(|(id, _)| *id);
            if let Some(e) = victim.and_then(|id| self.open.remove(&id)) {
                e.evict.notify_one();
                self.closing += 1;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let entry = Entry::default();
        self.open.insert(id, entry.clone());
        Some((id, entry))
    }

    /// Connection `id` ended, whether it was evicted or not.
    fn leave(&mut self, id: u64) {
        if self.open.remove(&id).is_none() {
            self.closing -= 1;
        }
    }
}

/// Binds `addr`. An unspecified IPv6 address (`[::]`, the default) takes IPv4 too (Linux's
/// `bindv6only=0`, the default in pods); where the pod has no IPv6 at all, it falls back to
/// `0.0.0.0` on the same port rather than not starting.
pub async fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(listen = %addr, error = %e, fallback = %v4, "no IPv6 in this pod: listening on IPv4 only");
            TcpListener::bind(v4).await
        }
        other => other,
    }
}

/// Serves until `shutdown` completes, then gives in-flight requests [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(16 * 1024)
        .keep_alive(true);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let Some((id, entry)) = lock(&table).admit() else {
            continue;
        };
        let conn = Connection {
            id,
            entry,
            table: table.clone(),
            stopping: stopping.clone(),
        };
        tasks.spawn(conn.serve(stream, builder.clone(), state.clone()));
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // Held for a few map operations, never across an await; a panic while held leaves a
    // table that is still consistent enough to go on.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection and what can end it early.
struct Connection {
    id: u64,
    entry: Entry,
    table: Arc<Mutex<Table>>,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, builder: http1::Builder, state: Arc<AppState>) {
        let io = TokioIo::new(WriteDeadline::new(stream, WRITE_TIMEOUT));
        let served = self.entry.served.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            if req.uri().path() != "/metrics" {
                let rsp = handle(&state, &req);
                served.store(true, Ordering::Relaxed);
                return Either::Left(future::ready(Ok::<_, Infallible>(rsp)));
            }
            let (state, served) = (state.clone(), served.clone());
            Either::Right(async move {
                // At most SCRAPES_PER_CPU_SECOND per core of the CPU limit.
                state.scrape_pacer.turn().await;
                let rsp = handle(&state, &req);
                served.store(true, Ordering::Relaxed);
                Ok(rsp)
            })
        });
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let close_early = tokio::select! {
            _ = conn.as_mut() => false,
            () = self.entry.evict.notified() => true,
            _ = self.stopping.wait_for(|stop| *stop) => true,
        };
        if close_early {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
        lock(&self.table).leave(self.id);
    }
}

/// A stream whose writes fail once they have made no progress for `timeout`.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Started when a write first waits; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_flush(cx);
        me.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_oldest_answered_and_refuses_only_when_too_many_close() {
        let mut t = Table::default();
        let first: Vec<_> = (0..MAX_CONNECTIONS).map(|_| t.admit().unwrap()).collect();
        first[5].1.served.store(true, Ordering::Relaxed);
        first[9].1.served.store(true, Ordering::Relaxed);
        t.admit().unwrap();
        assert!(
            !t.open.contains_key(&5),
            "the oldest answered one was evicted"
        );
        assert!(t.open.contains_key(&0), "one never answered stays");
        t.leave(5);
        t.admit().unwrap();
        assert!(!t.open.contains_key(&9));
        t.leave(9);
        let (id, _) = t.admit().unwrap();
        assert_eq!(id, MAX_CONNECTIONS as u64 + 2);
        assert!(!t.open.contains_key(&0), "with none answered, the oldest");
        assert_eq!(t.closing, 1);
        t.leave(0);
        assert_eq!(
            t.closing, 0,
            "an evicted connection that ends is no longer closing"
        );
        for _ in 0..MAX_CLOSING {
            t.admit().unwrap();
        }
        assert!(t.admit().is_none(), "refused while too many are closing");
        t.leave(first[1].0);
        assert!(t.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(server, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(client);
    }
}
