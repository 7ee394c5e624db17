//! Measures group commit: records per second and syncs per record under concurrent load.
//!
//! ```sh
//! cargo run --release -p xshadow-spool --example syncs
//! cargo run --release -p xshadow-spool --example syncs -- --threads 8 --per-thread 10000 \
//!     --size 1024 --dir /var/tmp/spool-bench
//! ```
//!
//! Two runs, each of `threads × per-thread` persists of one `Accepted` record with a body of
//! `size` bytes, on a fresh spool:
//!
//! - *open loop*: every thread queues its records as fast as it can, never waiting;
//! - *closed loop*: every thread is an SMTP client that waits for its message's `Persisted`
//!   before sending the next one (as a sender waits for the 250), so at most `threads`
//!   records can share a sync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xshadow_core::Bytes;
use xshadow_core::session::{Envelope, Recipient};
use xshadow_core::shadow::MessageId;
use xshadow_core::store::Record;
use xshadow_core::wire::Command;
use xshadow_spool::{Completion, Completions, Spool, SpoolOptions, SpoolStats};

/// The command line.
struct Args {
    threads: u64,
    per_thread: u64,
    size: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        threads: 8,
        per_thread: 10_000,
        size: 1024,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--threads" => args.threads = number()?.max(1),
            "--per-thread" => args.per_thread = number()?.max(1),
            "--size" => args.size = usize::try_from(number()?).map_err(|e| e.to_string())?,
            "--dir" => args.dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn envelope() -> Envelope {
    let Ok(Command::Mail { from, params }) = Command::parse(b"MAIL FROM:<load@example.com>") else {
        unreachable!("a valid MAIL line");
    };
    let Ok(Command::Rcpt { to, params: rcpt }) = Command::parse(b"RCPT TO:<sink@example.net>")
    else {
        unreachable!("a valid RCPT line");
    };
    Envelope {
        from: from.into_owned(),
        params: params.into_owned(),
        recipients: [Recipient {
            to: to.into_owned(),
            params: rcpt.into_owned(),
        }]
        .into(),
    }
}

fn message(id: u64, body: &Bytes, envelope: &Arc<Envelope>) -> Vec<Record> {
    vec![Record::Accepted {
        id: MessageId(id),
        at_ms: 1_700_000_000_000,
        envelope: envelope.clone(),
        body: body.clone(),
        primary_for: None,
    }]
}

/// A fresh spool directory for one run.
fn run_dir(base: &Path, run: &str) -> PathBuf {
    let dir = base.join(format!("xshadow-spool-syncs-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open_loop(
    args: &Args,
    dir: &Path,
) -> Result<(SpoolStats, Duration), Box<dyn std::error::Error>> {
    let (spool, _) = Spool::open(dir, SpoolOptions::default())?;
    let (tx, rx) = mpsc::channel();
    let handle = spool.spawn(Completions::channel(tx))?;
    let body = Bytes::from(vec![b'x'; args.size]);
    let envelope = Arc::new(envelope());
    let total = args.threads * args.per_thread;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..args.threads {
            let (handle, body, envelope) = (&handle, &body, &envelope);
            scope.spawn(move || {
                for i in 0..args.per_thread {
                    let token = thread * args.per_thread + i;
                    if let Err(e) = handle.persist(token, message(token, body, envelope)) {
                        eprintln!("persist: {e}");
                        return;
                    }
                }
            });
        }
        for _ in 0..total {
            match rx.recv() {
                Ok(Completion::Persisted(_)) => {}
                Ok(Completion::Failed(e)) => panic!("spool failed: {e}"),
                Err(_) => panic!("the spool thread is gone"),
            }
        }
    });
    let elapsed = start.elapsed();
    let spool = handle.shutdown()?;
    Ok((spool.stats(), elapsed))
}

fn closed_loop(
    args: &Args,
    dir: &Path,
) -> Result<(SpoolStats, Duration), Box<dyn std::error::Error>> {
    let (spool, _) = Spool::open(dir, SpoolOptions::default())?;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..args.threads).map(|_| mpsc::channel::<()>()).unzip();
    let per_thread = args.per_thread;
    let handle = spool.spawn(Completions::callback(move |completion| match completion {
        Completion::Persisted(token) => {
            let client = usize::try_from(token / per_thread).unwrap_or(usize::MAX);
            let _ = senders[client].send(());
        }
        Completion::Failed(e) => panic!("spool failed: {e}"),
    }))?;
    let body = Bytes::from(vec![b'x'; args.size]);
    let envelope = Arc::new(envelope());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (client, acks) in receivers.into_iter().enumerate() {
            let (handle, body, envelope) = (&handle, &body, &envelope);
            scope.spawn(move || {
                for i in 0..per_thread {
                    let token = client as u64 * per_thread + i;
                    if let Err(e) = handle.persist(token, message(token, body, envelope)) {
                        eprintln!("persist: {e}");
                        return;
                    }
                    if acks.recv().is_err() {
                        return;
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let spool = handle.shutdown()?;
    Ok((spool.stats(), elapsed))
}

fn report(name: &str, stats: SpoolStats, elapsed: Duration) {
    let records = stats.records as f64;
    println!(
        "{name:<12} {:>7} records in {:>7.3} s: {:>9.0} records/s, {:>6} syncs, {:.5} syncs/record \
         ({:.1} records/sync), {:.5} fsyncs/record incl. rollovers and directories",
        stats.records,
        elapsed.as_secs_f64(),
        records / elapsed.as_secs_f64(),
        stats.syncs,
        stats.syncs as f64 / records,
        records / stats.syncs.max(1) as f64,
        stats.file_syncs as f64 / records,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args().map_err(|e| {
        format!("{e}\nusage: syncs [--threads N] [--per-thread N] [--size BYTES] [--dir DIR]")
    })?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    println!(
        "{} threads x {} persists of one Accepted record with a {} byte body, spool under {}",
        args.threads,
        args.per_thread,
        args.size,
        base.display()
    );
    for (name, run) in [
        ("open loop", open_loop as fn(&Args, &Path) -> _),
        ("closed loop", closed_loop),
    ] {
        let dir = run_dir(&base, &name.replace(' ', "-"));
        let result = run(&args, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (stats, elapsed) = result?;
        report(name, stats, elapsed);
    }
    Ok(())
}
