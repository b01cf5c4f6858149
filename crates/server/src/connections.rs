//! Connections bounded in number and in time, whatever the peer does.
//!
//! - At most `connections_max` are open (lowered to what the file-descriptor
//!   limit leaves): past it a new connection is answered 429
//!   `connections_full` and closed at once, instead of every client timing
//!   out once the process runs out of file descriptors (accept errors,
//!   `EMFILE` included, are backed off by axum: a second).
//! - A connection with no traffic either way for `idle_timeout_ms` is closed:
//!   an idle keep-alive connection, and a stream whose client stopped
//!   reading (its writes make no progress).
//! - A request must arrive within `request_read_timeout_ms` of its first
//!   byte: a client dribbling its headers a byte a second (slowloris) is cut
//!   off. The clock restarts with every answer Sluice writes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The bounds, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections_max: usize,
    pub idle_timeout: Duration,
    pub request_read_timeout: Duration,
}

/// File descriptors kept for everything but client connections: the
/// stores' pools, the data files, the script threads, logs.
pub const DESCRIPTORS_RESERVED: usize = 128;

/// `connections_max`, lowered to what the process's file-descriptor limit
/// leaves (less `DESCRIPTORS_RESERVED`): past the limit `accept` fails with
/// `EMFILE` and every new client waits through back-offs (under `ulimit -n
/// 256`, 363 idle sockets made every new client time out), where a
/// connection over the cap is closed at once and the others are served.
pub fn within_descriptors(connections_max: usize) -> usize {
    let Some(limit) = descriptor_limit() else {
        return connections_max;
    };
    let room = limit.saturating_sub(DESCRIPTORS_RESERVED).max(1);
    if room < connections_max {
        tracing::warn!(
            connections_max,
            descriptor_limit = limit,
            connections = room,
            "connections_max is more than the file-descriptor limit leaves; lowered"
        );
        return room;
    }
    connections_max
}

/// The soft limit on open file descriptors, if there is one.
fn descriptor_limit() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `getrlimit` writes the struct it is given, nothing else.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        if got == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            return usize::try_from(limit.rlim_cur).ok();
        }
    }
    None
}

/// Refused connections kept open for a moment, to read the request's head
/// and answer it. Past this many, one is answered blindly and closed.
const REFUSED_LINGERING_MAX: usize = 64;
/// How long a refused connection may take to send its request's head, and
/// to take the answer.
const REFUSED_LINGER: Duration = Duration::from_millis(500);

/// The answer to a connection past the cap.
const REFUSED_ANSWER: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 102\r\n\r\n\
{\"error\":{\"code\":\"connections_full\",\"message\":\"every connection slot is taken; retry after a second\"}}";

/// A listener that hands out bounded connections.
pub struct Bounded {
    listener: TcpListener,
    limits: Limits,
    open: Arc<Semaphore>,
    lingering: Arc<Semaphore>,
}

impl Bounded {
    pub fn new(listener: TcpListener, limits: Limits) -> Bounded {
        let open = Arc::new(Semaphore::new(limits.connections_max.max(1)));
        Bounded {
            listener,
            limits,
            open,
            lingering: Arc::new(Semaphore::new(REFUSED_LINGERING_MAX)),
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => return (Guarded::new(stream, permit, self.limits), addr),
                // Full: answered and closed at once, so the client learns it now.
                Err(_) => {
                    tracing::debug!(%addr, "connection refused: too many open");
                    refuse(stream, &self.lingering);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Answers a connection past the cap and closes it. An HTTP client takes
/// an answer only after its request (hyper drops one that comes first), so
/// the request's head is read first, for a moment, while a lingering slot
/// is free; past that the answer is written at once, best effort.
fn refuse(stream: TcpStream, lingering: &Arc<Semaphore>) {
    let Ok(slot) = lingering.clone().try_acquire_owned() else {
        let _ = stream.try_write(REFUSED_ANSWER);
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let mut head = [0u8; 8192];
        let mut filled = 0;
        let _ = tokio::time::timeout(REFUSED_LINGER, async {
            while filled < head.len() {
                match stream.read(&mut head[filled..]).await {
                    Ok(n) if n > 0 => filled += n,
                    _ => return,
                }
                if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                    return;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(REFUSED_LINGER, async {
            stream.write_all(REFUSED_ANSWER).await?;
            stream.shutdown().await?;
            // What the client still sends (a body) is read and dropped: a
            // socket closed with bytes unread is reset, and a reset can
            // reach the client before the answer does.
            let mut sink = [0u8; 8192];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(slot);
    });
}

/// A connection under the bounds; it gives its slot back when dropped.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    limits: Limits,
    /// Fires after `idle_timeout` without traffic.
    idle: Pin<Box<Sleep>>,
    /// Armed by the first byte of a request, disarmed by the answer.
    request: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, limits: Limits) -> Guarded {
        Guarded {
            stream,
            _slot: slot,
            limits,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            request: None,
        }
    }

    fn traffic(&mut self) {
        let deadline = tokio::time::Instant::now() + self.limits.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// Accounts for a write: progress is traffic, and an answer being
    /// written means its request has arrived; a stalled write still ends
    /// when the connection has been idle too long.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.traffic();
                    self.request = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.idle_expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    /// An error once the connection has been idle too long.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.idle
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "idle connection"))
    }

    /// An error when a request is still arriving past its time. Asked only
    /// when bytes arrive: a request that has arrived and waits for its
    /// decision is not being read too slowly.
    fn request_expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let request = self.request.as_mut()?;
        request
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "request read too slowly"))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.traffic();
                    if self.request.is_none() {
                        let timeout = self.limits.request_read_timeout;
                        self.request = Some(Box::pin(tokio::time::sleep(timeout)));
                    } else if let Some(e) = self.request_expired(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.idle_expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_answer() {
        let text = std::str::from_utf8(REFUSED_ANSWER).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 429 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "connections_full");
    }
}
