//! Start-up errors say what is wrong, and an abort is a crash that loses nothing the node
//! acknowledged, under async-std's executor and under smol's.

mod support;

use std::io;

use support::{
    ASYNC_STD, Runtime, SMOL, TempDir, envelope, eventually, fast_config, loopback, sleep, start,
    within,
};

async fn clear_errors(_rt: Runtime) -> io::Result<()> {
    let spool = TempDir::new("locked");
    let first = start(fast_config("a.test"), loopback(), &spool.0).await?;
    let Err(locked) = start(fast_config("b.test"), loopback(), &spool.0).await else {
        panic!("a second node opened a locked spool");
    };
    let text = locked.to_string();
    assert!(
        text.contains("already in use") && text.contains("LOCK"),
        "{text}"
    );

    let taken = std::net::TcpListener::bind(loopback())?;
    let addr = taken.local_addr()?;
    let other = TempDir::new("port");
    let Err(in_use) = start(fast_config("c.test"), addr, &other.0).await else {
        panic!("a node listened on a port in use");
    };
    assert_eq!(in_use.kind(), io::ErrorKind::AddrInUse);
    let text = in_use.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    // The failed start released its spool.
    let second = start(fast_config("c.test"), loopback(), &other.0).await?;

    for node in [first, second] {
        node.handle().stop();
        within(10, "a node stops", node.wait()).await?;
    }
    Ok(())
}

async fn abort_loses_nothing(_rt: Runtime) -> io::Result<()> {
    let spool = TempDir::new("crash");
    // A next hop that refuses connections: the message stays queued.
    let refused = std::net::TcpListener::bind(loopback())?.local_addr()?;
    let mut config = fast_config("crash.test");
    config.next_hops = vec![refused.to_string()];
    let node = start(config.clone(), loopback(), &spool.0).await?;
    let database_id = node.database_id().to_owned();
    node.handle()
        .submit(envelope(), b"Subject: kept\r\n\r\nkept\r\n".to_vec())
        .await?;
    let handle = node.handle();
    node.abort();
    eventually(5, "the aborted node is gone", || async {
        handle.stats().await.is_err()
    })
    .await;

    // The kernel-level lock goes with the dropped task; restart as soon as it is free.
    let node = within(5, "the spool can be opened again", async {
        loop {
            match start(config.clone(), loopback(), &spool.0).await {
                Ok(node) => break node,
                Err(_) => sleep(20).await,
            }
        }
    })
    .await;
    assert_eq!(node.database_id(), database_id);
    let stats = node.handle().stats().await?;
    assert_eq!(stats.queued + stats.in_flight, 1, "{stats:?}");
    node.handle().stop();
    within(10, "the restarted node stops", node.wait()).await
}

#[test]
fn start_errors_name_the_locked_spool_and_the_port_in_use_under_async_std() {
    (ASYNC_STD.block_on)(Box::pin(clear_errors(ASYNC_STD))).unwrap();
}

#[test]
fn start_errors_name_the_locked_spool_and_the_port_in_use_under_smol() {
    (SMOL.block_on)(Box::pin(clear_errors(SMOL))).unwrap();
}

#[test]
fn an_aborted_node_restarts_with_what_it_acknowledged_under_async_std() {
    (ASYNC_STD.block_on)(Box::pin(abort_loses_nothing(ASYNC_STD))).unwrap();
}

#[test]
fn an_aborted_node_restarts_with_what_it_acknowledged_under_smol() {
    (SMOL.block_on)(Box::pin(abort_loses_nothing(SMOL))).unwrap();
}
