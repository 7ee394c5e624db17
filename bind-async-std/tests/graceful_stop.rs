//! A graceful stop refuses new connections, lets open sessions finish within the grace
//! period, closes the ones that do not, and flushes the spool, under both executors.

mod support;

use std::io;
use std::time::{Duration, Instant};

use async_net::TcpStream;
use futures_lite::AsyncReadExt;
use support::{
    ASYNC_STD, Runtime, SMOL, TempDir, body, eventually, fast_config, loopback, reply,
    send_message, start, step, within,
};

async fn stop_lets_sessions_finish(_rt: Runtime) -> io::Result<()> {
    let spool = TempDir::new("stop");
    // A next hop that refuses connections: what the node takes stays queued.
    let refused = std::net::TcpListener::bind(loopback())?.local_addr()?;
    let mut config = fast_config("stop.test");
    config.next_hops = vec![refused.to_string()];
    let node = start(config.clone(), loopback(), &spool.0).await?;
    let addr = node.local_addr();

    let (mut busy, mut busy_pending) = (TcpStream::connect(addr).await?, Vec::new());
    assert_eq!(reply(&mut busy, &mut busy_pending).await?, 220);
    step(&mut busy, &mut busy_pending, b"EHLO busy.test\r\n", 250).await?;
    let (mut idle, mut idle_pending) = (TcpStream::connect(addr).await?, Vec::new());
    assert_eq!(reply(&mut idle, &mut idle_pending).await?, 220);

    let stopping = Instant::now();
    node.handle().stop();
    eventually(5, "the listener closes", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The open session still completes a transaction and says goodbye.
    send_message(&mut busy, &mut busy_pending, &body("during-stop")).await?;
    step(&mut busy, &mut busy_pending, b"QUIT\r\n", 221).await?;

    // The idle session holds the node until the 2 s grace period ends; then it is closed.
    within(10, "the node stops", node.wait()).await?;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    let mut rest = [0u8; 512];
    let read = within(5, "the idle session is closed", idle.read(&mut rest)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The spool was flushed: the message taken during the stop is still queued.
    let node = start(config, loopback(), &spool.0).await?;
    let stats = node.handle().stats().await?;
    assert_eq!(stats.queued + stats.in_flight, 1, "{stats:?}");
    node.handle().stop();
    within(10, "the restarted node stops", node.wait()).await
}

#[test]
fn a_stop_lets_open_sessions_finish_within_the_grace_period_under_async_std() {
    (ASYNC_STD.block_on)(Box::pin(stop_lets_sessions_finish(ASYNC_STD))).unwrap();
}

#[test]
fn a_stop_lets_open_sessions_finish_within_the_grace_period_under_smol() {
    (SMOL.block_on)(Box::pin(stop_lets_sessions_finish(SMOL))).unwrap();
}
