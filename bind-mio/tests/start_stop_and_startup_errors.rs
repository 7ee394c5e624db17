//! The mio node's life: graceful stop lets open sessions finish and releases the spool, an
//! abort loses nothing acknowledged, `run` blocks the calling thread, and startup errors say
//! what is wrong.

mod support;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{
    Client, TempDir, body_for, dead_address, envelope, eventually, fast_config, loopback, settings,
};

fn edge_to_nowhere() -> xshadow_core::node::NodeConfig {
    let mut c = fast_config("edge.test");
    c.next_hops = vec![dead_address().to_string()];
    c
}

#[test]
fn a_graceful_stop_lets_open_sessions_finish_then_exits_and_releases_the_spool() {
    let spool = TempDir::new("graceful");
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    let addr = node.local_addr();
    let mut client = Client::connect(addr).unwrap();
    assert!(
        client
            .command("EHLO client.test")
            .unwrap()
            .starts_with("250")
    );

    let asked = Instant::now();
    node.handle().stop();
    assert!(
        eventually(Duration::from_secs(2), || TcpStream::connect(addr).is_err()),
        "no new connections after a stop"
    );
    // The open session still finishes its transaction.
    let reply = client.send("bob", &body_for("late")).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    assert!(client.command("QUIT").unwrap().starts_with("221"));
    node.wait().unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "the node exits once its sessions are done, not at the end of the grace period"
    );

    // The lock is released and the acknowledged message is in the spool.
    let restarted = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    assert_eq!(restarted.handle().stats().unwrap().queued, 1);
    restarted.handle().stop();
    restarted.wait().unwrap();
}

#[test]
fn a_stop_ends_idle_sessions_at_the_end_of_the_grace_period() {
    let spool = TempDir::new("grace");
    let mut s = settings(edge_to_nowhere(), spool.path());
    s.grace = Duration::from_millis(300);
    let node = xshadow_mio::start(s).unwrap();
    let mut idle = Client::connect(node.local_addr()).unwrap();
    let asked = Instant::now();
    node.handle().stop();
    node.wait().unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(250));
    assert!(idle.reply().is_err(), "the idle connection was closed");
}

#[test]
fn an_aborted_node_loses_nothing_it_acknowledged() {
    let spool = TempDir::new("abort");
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    let mut client = Client::connect(node.local_addr()).unwrap();
    assert!(
        client
            .command("EHLO client.test")
            .unwrap()
            .starts_with("250")
    );
    let reply = client.send("bob", &body_for("kept")).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    node.abort();
    assert!(
        client.command("NOOP").is_err(),
        "the peer sees its connection drop"
    );

    let restarted = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    assert_eq!(restarted.handle().stats().unwrap().queued, 1);
    restarted.abort();
}

#[test]
fn run_blocks_the_calling_thread_until_stopped() {
    let spool = TempDir::new("run");
    let bound = xshadow_mio::bind(settings(edge_to_nowhere(), spool.path())).unwrap();
    let handle = bound.handle();
    let stopper = std::thread::spawn(move || {
        let id = handle.submit(envelope("bob"), body_for("run")).unwrap();
        handle.stop();
        id
    });
    bound.run().unwrap();
    stopper.join().unwrap();
}

#[test]
fn a_handle_of_a_stopped_node_says_so() {
    let spool = TempDir::new("stopped");
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    let handle = node.handle();
    handle.stop();
    node.wait().unwrap();
    let err = handle.stats().unwrap_err();
    assert!(err.to_string().contains("stopped"), "{err}");
}

#[test]
fn a_spool_directory_in_use_is_a_clear_error() {
    let spool = TempDir::new("locked");
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    let Err(err) = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())) else {
        panic!("a second node opened a locked spool");
    };
    let text = err.to_string();
    assert!(text.contains("already in use"), "{text}");
    assert!(text.contains(&spool.path().display().to_string()), "{text}");
    node.handle().stop();
    node.wait().unwrap();
}

#[test]
fn a_configuration_the_node_cannot_run_with_is_refused_before_the_spool_is_touched() {
    let spool = TempDir::new("badconfig");
    let mut config = edge_to_nowhere();
    config.server.max_pending_output = 0;
    let Err(err) = xshadow_mio::start(settings(config, spool.path())) else {
        panic!("a node that would never read a command started");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("server.max_pending_output"),
        "{err}"
    );
    assert!(
        !spool.path().join(xshadow_spool::LOCK_FILE).exists(),
        "the spool was not opened"
    );
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    node.handle().stop();
    node.wait().unwrap();
}

#[test]
fn a_port_in_use_is_a_clear_error_and_leaves_the_spool_free() {
    let spool = TempDir::new("port");
    let taken = TcpListener::bind(loopback()).unwrap();
    let addr = taken.local_addr().unwrap();
    let mut s = settings(edge_to_nowhere(), spool.path());
    s.listen = addr;
    let Err(err) = xshadow_mio::start(s) else {
        panic!("two listeners on one port");
    };
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on {addr}")),
        "{err}"
    );
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    node.handle().stop();
    node.wait().unwrap();
}

#[test]
fn a_client_that_does_not_read_its_replies_loses_none_of_them() {
    use std::io::{BufRead, BufReader, Write};
    let spool = TempDir::new("backpressure");
    let node = xshadow_mio::start(settings(edge_to_nowhere(), spool.path())).unwrap();
    let stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    const EHLOS: usize = 100_000;
    // Megabytes of replies (EHLO's are long) pile up on the node while nobody reads them.
    let sender = std::thread::spawn(move || {
        let batch = "EHLO c\r\n".repeat(1000);
        for _ in 0..EHLOS / 1000 {
            writer.write_all(batch.as_bytes()).unwrap();
        }
        writer.write_all(b"QUIT\r\n").unwrap();
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut reader = BufReader::new(stream);
    let (mut hellos, mut line) = (0, String::new());
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        match &line[..4] {
            "250 " => hellos += 1,
            "250-" | "220 " | "221 " => {}
            other => panic!("unexpected reply {other}: {line}"),
        }
    }
    sender.join().unwrap();
    assert_eq!(hellos, EHLOS);
    node.handle().stop();
    node.wait().unwrap();
}
