//! The pod's TCP connections to given addresses, from the kernel through netlink sock_diag
//! (INET_DIAG, what `ss` uses), with a filter the kernel runs: only established sockets whose
//! remote end is one of the nodes come back, so the cost does not grow with the pod's other
//! sockets (reading `/proc/net/tcp` walks and formats every one). Each comes with its
//! `tcp_info`: round-trip time, retransmissions, time since it last received data.
//!
//! The messages are encoded and decoded here (the layouts are the kernel's stable uapi:
//! `linux/inet_diag.h`, `linux/tcp.h`); netlink-sys provides the socket.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// One established TCP socket of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub remote: SocketAddr,
    pub inode: u64,
    /// Smoothed round-trip time (`tcpi_rtt`).
    pub rtt: Duration,
    /// Retransmitted segments over the socket's life (`tcpi_total_retrans`).
    pub retransmits: u32,
    /// Since the socket last received data (`tcpi_last_data_recv`).
    pub idle: Duration,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_D_COND: u8 = 8;
const TCP_ESTABLISHED: u32 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// The established sockets whose remote end is in `remotes`, both address families.
/// `Err` where netlink sock_diag is refused (the caller falls back to `/proc/net/tcp`).
pub fn dump(remotes: &[SocketAddr]) -> std::io::Result<Vec<Conn>> {
    let mut out = vec![];
    for family in [AF_INET, AF_INET6] {
        let mut these: Vec<SocketAddr> = remotes
            .iter()
            .filter(|r| family_of(r.ip()) == family)
            .copied()
            .collect();
        if family == AF_INET6 && !these.is_empty() {
            // A dual-stack socket reaches an IPv4 node at its IPv4-mapped address.
            these.extend(remotes.iter().filter_map(|r| match r.ip() {
                IpAddr::V4(v4) => Some(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), r.port())),
                IpAddr::V6(_) => None,
            }));
        }
        if !these.is_empty() {
            dump_one(family, &these, &mut out)?;
        }
    }
    Ok(out)
}

fn dump_one(family: u8, remotes: &[SocketAddr], out: &mut Vec<Conn>) -> std::io::Result<()> {
    {
        // One socket per dump: its replies are this request's only.
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        socket.send(&request(family, remotes), 0)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        'recv: loop {
            buf.clear();
            let n = socket.recv(&mut buf, 0)?;
            for msg in messages(&buf[..n]) {
                match msg {
                    Message::Done => break 'recv,
                    Message::Error(code) => {
                        return Err(std::io::Error::from_raw_os_error(code));
                    }
                    Message::Socket(c) => out.extend(c),
                }
            }
        }
    }
    Ok(())
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// A dump request for `family`'s established TCP sockets with `tcp_info`, filtered by the
/// kernel to remote ends in `remotes` (all of that family).
pub fn request(family: u8, remotes: &[SocketAddr]) -> Vec<u8> {
    let bytecode = filter(remotes);
    let mut body = vec![family, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0];
    body.extend((1u32 << TCP_ESTABLISHED).to_ne_bytes());
    body.extend([0u8; 48]); // inet_diag_sockid: any
    let attr_len = 4 + bytecode.len();
    body.extend((attr_len as u16).to_ne_bytes());
    body.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    body.extend(bytecode);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend(((16 + body.len()) as u32).to_ne_bytes());
    msg.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // sequence
    msg.extend(0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend(body);
    msg
}

/// `remote == r1 || remote == r2 || ...` as inet_diag bytecode, laid out as `ss` does: each
/// condition, when it holds, falls through to a JMP that leaves for the end (accept); when it
/// does not, it skips that JMP to the next condition; the last one's "not" lands 4 bytes past
/// the end (reject). The kernel checks the code by following the "yes" offsets, which here
/// visit every op, and JMP always takes its "no" offset, 16 bits wide, so any number of nodes
/// fits.
pub fn filter(remotes: &[SocketAddr]) -> Vec<u8> {
    let ops: Vec<Vec<u8>> = remotes.iter().map(host_cond).collect();
    let total: usize = ops.iter().map(Vec::len).sum::<usize>() + 4 * ops.len().saturating_sub(1);
    let mut out = Vec::with_capacity(total);
    for (i, op) in ops.iter().enumerate() {
        out.push(INET_DIAG_BC_D_COND);
        out.push(op.len() as u8);
        out.extend(((op.len() + 4) as u16).to_ne_bytes());
        out.extend_from_slice(&op[4..]);
        if i + 1 < ops.len() {
            let to_end = total - out.len();
            out.push(INET_DIAG_BC_JMP);
            out.push(4);
            out.extend((to_end as u16).to_ne_bytes());
        }
    }
    out
}

/// One `INET_DIAG_BC_D_COND` op (its 4-byte header left to fill) for `addr` exactly.
fn host_cond(addr: &SocketAddr) -> Vec<u8> {
    let (family, bits, ip): (u8, u8, Vec<u8>) = match addr.ip() {
        IpAddr::V4(v) => (AF_INET, 32, v.octets().to_vec()),
        IpAddr::V6(v) => (AF_INET6, 128, v.octets().to_vec()),
    };
    let mut op = vec![0u8; 4];
    op.extend([family, bits, 0, 0]);
    op.extend(i32::from(addr.port()).to_ne_bytes());
    op.extend(ip);
    op
}

enum Message {
    Done,
    Error(i32),
    Socket(Option<Conn>),
}

/// The netlink messages of one datagram.
fn messages(mut buf: &[u8]) -> Vec<Message> {
    let mut out = vec![];
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        if len < 16 || len > buf.len() {
            break;
        }
        let payload = &buf[16..len];
        out.push(match kind {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                let code = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if code == 0 {
                    Message::Done
                } else {
                    Message::Error(-code)
                }
            }
            SOCK_DIAG_BY_FAMILY => Message::Socket(parse_socket(payload)),
            _ => Message::Socket(None),
        });
        buf = &buf[(len + 3) & !3..];
    }
    out
}

/// An `inet_diag_msg` and its attributes; `None` when it is too short to be one.
pub fn parse_socket(p: &[u8]) -> Option<Conn> {
    if p.len() < 72 {
        return None;
    }
    let family = p[0];
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let dst = &p[24..40];
    let ip: IpAddr = match family {
        AF_INET => IpAddr::from(<[u8; 4]>::try_from(&dst[..4]).ok()?),
        AF_INET6 => IpAddr::from(<[u8; 16]>::try_from(dst).ok()?),
        _ => return None,
    };
    let inode = u64::from(u32::from_ne_bytes(p[68..72].try_into().ok()?));
    let mut conn = Conn {
        remote: SocketAddr::new(ip, dport),
        inode,
        rtt: Duration::ZERO,
        retransmits: 0,
        idle: Duration::ZERO,
    };
    let mut attrs = &p[72..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        if kind == INET_DIAG_INFO && data.len() >= 104 {
            let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
            conn.idle = Duration::from_millis(u64::from(u32_at(52)));
            conn.rtt = Duration::from_micros(u64::from(u32_at(68)));
            conn.retransmits = u32_at(100);
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    Some(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel answers this process's own connection, and only it: a listener and a
    /// client on loopback, then a dump filtered to the listener's address.
    #[test]
    fn the_kernel_filters_to_the_given_remotes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let _server = listener.accept().unwrap();
        let _unrelated = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let conns = dump(&[addr]).expect("sock_diag");
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].remote, addr);
        assert!(conns[0].inode > 0);
        assert!(dump(&["127.0.0.1:1".parse().unwrap()]).unwrap().is_empty());
        // Many remotes: the same answer.
        let mut many: Vec<SocketAddr> = (2..40)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        many.push(addr);
        assert_eq!(dump(&many).unwrap().len(), 1);
    }

    #[test]
    fn odd_input_is_not_a_socket() {
        assert_eq!(parse_socket(&[0u8; 10]), None);
        // A length past the end of the datagram ends the parse.
        assert!(messages(&[0xff; 40]).is_empty());
        let mut short = vec![0u8; 72];
        short[0] = 99;
        assert_eq!(parse_socket(&short), None);
    }
}
