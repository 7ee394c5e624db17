//! A node out of file descriptors, on every runtime: clients it cannot accept yet wait in the
//! listen queue and are greeted once others hang up, and while they wait the node retries
//! `accept` a few times a second instead of spinning on the error.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{Runtime, Scratch, XSHADOW, free_port, loopback};

/// How long the test waits for the waiting clients to be greeted.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long the clients are left waiting while the node has no descriptor to spare.
const HOLD: Duration = Duration::from_secs(1);

/// The most `accept failed` lines the node may log while clients wait for `HOLD`: a pause of
/// 50 ms after each failure allows about 20; retrying at once logs thousands.
const MOST_FAILURES: usize = 200;

on_every_runtime!(
    a_node_out_of_descriptors_pauses_accepting_and_serves_the_waiting_clients_later =>
    a_node_out_of_descriptors_pauses_accepting_on_tokio,
    a_node_out_of_descriptors_pauses_accepting_on_mio,
    a_node_out_of_descriptors_pauses_accepting_on_async_std,
);

fn a_node_out_of_descriptors_pauses_accepting_and_serves_the_waiting_clients_later(
    runtime: Runtime,
) {
    let scratch = Scratch::new(&format!("node-nofile-{runtime}"));
    // Nothing is relayed in this test: the relay need not exist.
    let relay = loopback(free_port());
    let spool = scratch.join("spool");
    let (node, addr) =
        common::start_node("xshadow edge", &scratch.join("edge.log"), runtime, |port| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "ulimit -n 64 && exec \"$0\" edge --name edge.test --listen {} --spool \"$1\" \
                     --relay {relay} --runtime {}",
                    loopback(port),
                    runtime.arg()
                ))
                .arg(XSHADOW)
                .arg(&spool);
            cmd
        });
    let crowd = common::Crowd::connect(addr, "node");
    let failures_before = node.log_text().matches("accept failed").count();
    std::thread::sleep(HOLD);
    let failures = node.log_text().matches("accept failed").count() - failures_before;
    assert!(
        failures <= MOST_FAILURES,
        "{failures} failed accepts logged in {HOLD:?}: the node retries without pausing"
    );
    crowd.free_some_and_greet_the_rest(PATIENCE);
}
