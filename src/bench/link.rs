//! The bench's simulated network link: a TCP relay that holds the bytes of
//! each direction for half the round trip, then forwards them, in order,
//! per connection. These machines have no kernel queueing discipline
//! (`netem`), and tokio's timer counts whole milliseconds, so the delay is
//! kept by one thread of its own: a deadline queue it sleeps on (no spin on
//! two cores). A thread's sleep here overshoots by about 90 µs, so it
//! wakes that much early and forwards what is due then: on average on time.
//!
//! The relay does not model bandwidth or loss, and keeps no flow control of
//! its own across the delay (what it has read, it holds): the bench's
//! clients send requests and wait for answers, so what is held stays small.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc as tokio_mpsc;

/// How much earlier than its deadline the delay thread wakes: what a
/// thread's sleep overshoots by here.
const WAKE_EARLY: Duration = Duration::from_micros(90);
/// The most one read takes from a socket.
const CHUNK_BYTES: usize = 64 * 1024;

/// A running relay: connect to `addr` to reach the target through the link.
pub struct Link {
    pub addr: SocketAddr,
    pub rtt: Duration,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Open connections end when their peers close; new ones are refused.
        self.accept.abort();
    }
}

/// Bytes of one direction of one connection, due at `due`.
struct Held {
    due: Instant,
    /// Ties broken by arrival, so a direction's bytes keep their order.
    seq: u64,
    bytes: Vec<u8>,
    to: tokio_mpsc::UnboundedSender<Vec<u8>>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Starts a relay to `target` with round trip `rtt` (zero: forwarded at once).
pub async fn start(target: SocketAddr, rtt: Duration) -> io::Result<Link> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let delay = if rtt.is_zero() {
        None
    } else {
        let (tx, rx) = mpsc::channel::<Held>();
        std::thread::Builder::new()
            .name("sluice-bench-link".into())
            .spawn(move || hold(&rx))?;
        Some(tx)
    };
    let half = rtt / 2;
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay = delay.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, half, delay.clone()));
                tokio::spawn(pump(server_read, client_write, half, delay));
            });
        }
    });
    Ok(Link { addr, rtt, accept })
}

/// One direction: read, hold for `half` (on the delay thread), write.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    half: Duration,
    delay: Option<mpsc::Sender<Held>>,
) {
    let (due_tx, mut due_rx) = tokio_mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = due_rx.recv().await {
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut seq = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = buf[..n].to_vec();
        match &delay {
            None => {
                if due_tx.send(bytes).is_err() {
                    break;
                }
            }
            Some(delay) => {
                seq += 1;
                let held = Held {
                    due: Instant::now() + half,
                    seq,
                    bytes,
                    to: due_tx.clone(),
                };
                if delay.send(held).is_err() {
                    break;
                }
            }
        }
    }
    // The writer ends once everything held for it is forwarded.
    drop(due_tx);
    let _ = writer.await;
}

/// The delay thread: forwards what is due, sleeps until the next is.
fn hold(incoming: &mpsc::Receiver<Held>) {
    let mut queue: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while queue
            .peek()
            .is_some_and(|Reverse(next)| next.due <= now + WAKE_EARLY)
        {
            if let Some(Reverse(due)) = queue.pop() {
                let _ = due.to.send(due.bytes);
            }
        }
        let next = match queue.peek() {
            None => incoming.recv().map_err(|_| ()),
            Some(Reverse(next)) => {
                let wait = next.due.saturating_duration_since(now + WAKE_EARLY);
                match incoming.recv_timeout(wait) {
                    Ok(held) => Ok(held),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                }
            }
        };
        match next {
            Ok(held) => queue.push(Reverse(held)),
            // No relay left to feed it: forward what is held, then end.
            Err(()) if queue.is_empty() => return,
            Err(()) => {
                if let Some(Reverse(next)) = queue.peek() {
                    std::thread::sleep(next.due.saturating_duration_since(Instant::now()));
                }
            }
        }
    }
}

/// A link's round trip as a client sees it: the median and 99th
/// percentile of `pings` one-byte ping-pongs through it to an echo server.
pub async fn measure(rtt: Duration, pings: usize) -> io::Result<(Duration, Duration)> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?;
    let server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = echo.accept().await {
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).await.is_ok() {
                if stream.write_all(&byte).await.is_err() {
                    return;
                }
            }
        }
    });
    let link = start(target, rtt).await?;
    let mut client = TcpStream::connect(link.addr).await?;
    client.set_nodelay(true)?;
    let mut took = Vec::with_capacity(pings);
    let mut byte = [0u8; 1];
    for _ in 0..pings.max(1) {
        let started = Instant::now();
        client.write_all(b"p").await?;
        client.read_exact(&mut byte).await?;
        took.push(started.elapsed());
    }
    drop(client);
    server.abort();
    took.sort();
    Ok((took[took.len() / 2], took[took.len() * 99 / 100]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_through_the_link_takes_its_time() {
        let rtt = Duration::from_millis(2);
        let (median, _) = measure(rtt, 100).await.expect("measure");
        // Loose on the slow side: the machine's load is not the relay's.
        assert!(
            median >= rtt.mul_f64(0.8) && median <= rtt * 5,
            "median {median:?} for a {rtt:?} link"
        );
        let (loopback, _) = measure(Duration::ZERO, 100).await.expect("measure");
        assert!(loopback < rtt / 2, "loopback took {loopback:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_whole_and_in_order_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let (stream, _) = echo.accept().await.expect("accept");
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let link = start(target, Duration::from_millis(1)).await.expect("link");
        let client = TcpStream::connect(link.addr).await.expect("connect");
        let (mut r, mut w) = client.into_split();
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(7_919) {
                w.write_all(chunk).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered or changed");
    }
}
