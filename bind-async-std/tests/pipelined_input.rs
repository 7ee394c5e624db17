//! A pipelining client that sends the next transaction with the end of each message: the
//! node holds input back while the message is persisted (`Node::may_read`), reads again
//! after its 250, and answers every command in order, under both executors.

mod support;

use std::io;

use async_net::TcpStream;
use futures_lite::AsyncWriteExt;
use support::{
    ASYNC_STD, Runtime, SMOL, TempDir, body, dot_stuffed, fast_config, loopback, reply, start,
    within,
};

async fn pipelined(_rt: Runtime) -> io::Result<()> {
    let spool = TempDir::new("pipelined");
    let refused = std::net::TcpListener::bind(loopback())?.local_addr()?;
    let mut config = fast_config("pipelined.test");
    config.next_hops = vec![refused.to_string()];
    let node = start(config, loopback(), &spool.0).await?;

    let (mut s, mut p) = (TcpStream::connect(node.local_addr()).await?, Vec::new());
    let transaction: &[u8] =
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n";
    s.write_all(&[b"EHLO pipelining.test\r\n", transaction].concat())
        .await?;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(reply(&mut s, &mut p).await?);
    }
    assert_eq!(codes, [220, 250, 250, 250, 354]);
    let count = 20;
    for i in 0..count {
        let last = i + 1 == count;
        let content = body(&format!("pipelined{i}"));
        let next: &[u8] = if last { b"QUIT\r\n" } else { transaction };
        s.write_all(&[&dot_stuffed(&content)[..], next].concat())
            .await?;
        let want: &[u16] = if last {
            &[250, 221]
        } else {
            &[250, 250, 250, 354]
        };
        for &code in want {
            let got = within(10, "a pipelined reply", reply(&mut s, &mut p)).await?;
            assert_eq!(got, code, "message {i}");
        }
    }
    let stats = node.handle().stats().await?;
    assert_eq!(stats.queued + stats.in_flight, count, "{stats:?}");
    node.handle().stop();
    within(10, "the node stops", node.wait()).await
}

#[test]
fn pipelined_commands_wait_for_the_persisted_250_and_are_all_answered_under_async_std() {
    (ASYNC_STD.block_on)(Box::pin(pipelined(ASYNC_STD))).unwrap();
}

#[test]
fn pipelined_commands_wait_for_the_persisted_250_and_are_all_answered_under_smol() {
    (SMOL.block_on)(Box::pin(pipelined(SMOL))).unwrap();
}
