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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// The relay's threads are named so, and their CPU is read by that name.
const THREAD_PREFIX: &str = "sluice-link";

/// The relays of one bench: one runtime thread and one delay thread for
/// every link, and one round trip for all of them, changed between runs.
/// The relay's threads are its own, so its CPU is read apart from the load
/// generator's ([`relay_cpu_us`]).
pub struct Relay {
    runtime: Option<tokio::runtime::Runtime>,
    half_us: Arc<AtomicU64>,
    delay: mpsc::Sender<Held>,
}

impl Relay {
    pub fn new(rtt: Duration) -> io::Result<Relay> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("{THREAD_PREFIX}-io"))
            .enable_io()
            .build()?;
        let (delay, rx) = mpsc::channel::<Held>();
        std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}-hold"))
            .spawn(move || hold(&rx))?;
        let relay = Relay {
            runtime: Some(runtime),
            half_us: Arc::new(AtomicU64::new(0)),
            delay,
        };
        relay.set_rtt(rtt);
        Ok(relay)
    }

    /// Every link's round trip from now on (bytes already held keep theirs).
    pub fn set_rtt(&self, rtt: Duration) {
        let half = u64::try_from((rtt / 2).as_micros()).unwrap_or(u64::MAX);
        self.half_us.store(half, Ordering::Relaxed);
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.half_us.load(Ordering::Relaxed) * 2)
    }

    /// A link to `target`: connect to the returned address to reach it.
    pub fn link(&self, target: SocketAddr) -> io::Result<Link> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| io::Error::other("relay stopped"))?;
        let listener = {
            let _entered = runtime.enter();
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            std_listener.set_nonblocking(true)?;
            TcpListener::from_std(std_listener)?
        };
        let addr = listener.local_addr()?;
        let (half_us, delay) = (self.half_us.clone(), self.delay.clone());
        let accept = runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (half_us, delay) = (half_us.clone(), delay.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(
                        client_read,
                        server_write,
                        half_us.clone(),
                        delay.clone(),
                    ));
                    tokio::spawn(pump(server_read, client_write, half_us, delay));
                });
            }
        });
        Ok(Link { addr, accept })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped inside the bench's own runtime, where blocking is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// User plus system CPU time of every relay thread of this process, in
/// microseconds (from `/proc/self/task/*/stat`); `None` without a relay.
pub fn relay_cpu_us() -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let named = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|name| name.starts_with(THREAD_PREFIX));
        if named {
            let cpu = super::child::stat_cpu_us(&path.join("stat")).unwrap_or(0);
            total = Some(total.unwrap_or(0) + cpu);
        }
    }
    total
}

/// A relay's listening end: connect to `addr` to reach the target through
/// the link.
pub struct Link {
    pub addr: SocketAddr,
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

/// One direction: read, hold for half the round trip (on the delay
/// thread), write.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    half_us: Arc<AtomicU64>,
    delay: mpsc::Sender<Held>,
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
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = buf[..n].to_vec();
        let half = Duration::from_micros(half_us.load(Ordering::Relaxed));
        if half.is_zero() && seq == 0 {
            if due_tx.send(bytes).is_err() {
                break;
            }
            continue;
        }
        seq += 1;
        // Never before the bytes read earlier, even if the round trip was
        // shortened in between: a direction keeps its order.
        last_due = last_due.max(Instant::now() + half);
        let held = Held {
            due: last_due,
            seq,
            bytes,
            to: due_tx.clone(),
        };
        if delay.send(held).is_err() {
            break;
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
pub async fn measure(relay: &Relay, pings: usize) -> io::Result<(Duration, Duration)> {
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
    let link = relay.link(target)?;
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
        let relay = Relay::new(rtt).expect("relay");
        let (median, _) = measure(&relay, 100).await.expect("measure");
        // Loose on the slow side: the machine's load is not the relay's.
        assert!(
            median >= rtt.mul_f64(0.8) && median <= rtt * 5,
            "median {median:?} for a {rtt:?} link"
        );
        relay.set_rtt(Duration::ZERO);
        let (loopback, _) = measure(&relay, 100).await.expect("measure");
        assert!(loopback < rtt / 2, "a zero round trip took {loopback:?}");
        // Counted in 10 ms ticks: a short test may not have used one.
        assert!(relay_cpu_us().is_some(), "the relay's threads are found");
        drop(relay);
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
        let relay = Relay::new(Duration::from_millis(1)).expect("relay");
        let link = relay.link(target).expect("link");
        // Shortened while bytes are held: they still arrive in order.
        let shorten = {
            let half = relay.half_us.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                half.store(0, Ordering::Relaxed);
            })
        };
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
        shorten.await.expect("shorten");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered or changed");
    }
}
