//! Reads an SMTP transcript (`C:` lines from the client, `S:` lines from the server), runs
//! every byte through xshadow's wire codec and prints what each side said, typed.
//!
//! `cargo run --example transcript [FILE]`; without FILE it reads the shadow-redundancy
//! session of `examples/data/shadow-session.txt`.

use std::process::ExitCode;

use xshadow::core::wire::{Command, DotReader, EhloReply, Frame, LineReader, Reply, ReplyReader};

const DEFAULT: &str = include_str!("data/shadow-session.txt");

fn main() -> ExitCode {
    let text = match std::env::args().nth(1) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("transcript: cannot read {path}: {err}");
                return ExitCode::from(2);
            }
        },
        None => DEFAULT.to_owned(),
    };
    // Rebuild the two byte streams as they crossed the wire.
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let (stream, rest) = if let Some(rest) = line.strip_prefix("C:") {
            (&mut client, rest)
        } else if let Some(rest) = line.strip_prefix("S:") {
            (&mut server, rest)
        } else if line.trim().is_empty() {
            continue;
        } else {
            eprintln!("transcript: line {} is neither C: nor S:", n + 1);
            return ExitCode::from(2);
        };
        stream.extend_from_slice(rest.strip_prefix(' ').unwrap_or(rest).as_bytes());
        stream.extend_from_slice(b"\r\n");
    }
    println!("== client -> server ({} bytes)", client.len());
    let answers = print_commands(&client);
    println!("\n== server -> client ({} bytes)", server.len());
    print_replies(&server, &answers)
}

/// What a server reply answers, in order: the greeting, then one per command (two for DATA).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answers {
    Greeting,
    Ehlo,
    XShadow,
    XqDiscard(u32),
    Other,
}

fn print_commands(mut input: &[u8]) -> Vec<Answers> {
    let mut answers = vec![Answers::Greeting];
    let mut lines = LineReader::default();
    while !input.is_empty() {
        let (frame, used) = lines.read(input);
        let line = match frame {
            Frame::Line(line) => line,
            Frame::TooLong => {
                println!("(line too long: 500 5.5.2)");
                input = &input[used..];
                continue;
            }
            Frame::NeedMore => {
                println!(
                    "(incomplete line at the end: {:?})",
                    String::from_utf8_lossy(input)
                );
                break;
            }
        };
        let command = Command::parse(line);
        input = &input[used..];
        answers.push(match &command {
            Ok(Command::Ehlo { .. }) => Answers::Ehlo,
            Ok(Command::XShadow { .. }) => Answers::XShadow,
            Ok(Command::XqDiscard { max }) => Answers::XqDiscard(*max),
            _ => Answers::Other,
        });
        match command {
            Ok(command @ Command::Data) => {
                println!("{command:?}");
                answers.push(Answers::Other);
                let mut body = Vec::new();
                let mut reader = DotReader::new();
                let progress = reader.read(input, &mut body);
                input = &input[progress.consumed..];
                if progress.done {
                    println!("  message body, {} bytes after un-stuffing:", body.len());
                    for l in String::from_utf8_lossy(&body).lines() {
                        println!("  | {l}");
                    }
                } else {
                    println!("  (the body never ended with <CRLF>.<CRLF>)");
                }
            }
            Ok(command) => println!("{command:?}"),
            Err(err) => print!("{err}: the server answers {}", err.reply()),
        }
    }
    answers
}

fn print_replies(mut input: &[u8], answers: &[Answers]) -> ExitCode {
    let mut reader = ReplyReader::new();
    let mut answers = answers.iter().copied();
    while !input.is_empty() {
        match reader.read(input) {
            Ok(Some((reply, used))) => {
                describe(&reply, answers.next().unwrap_or(Answers::Other));
                input = &input[used..];
            }
            Ok(None) => {
                println!("(incomplete reply at the end)");
                break;
            }
            Err(err) => {
                eprintln!("transcript: malformed reply: {err}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn describe(reply: &Reply<'_>, answers: Answers) {
    let status = reply.enhanced.map(|s| format!(" {s}")).unwrap_or_default();
    println!("{}{status} {:?}", reply.code, reply.lines.as_slice());
    match answers {
        Answers::Ehlo => match EhloReply::from_reply(reply) {
            Ok(ehlo) => println!("  EHLO from {}: {:?}", ehlo.domain, ehlo.keywords),
            Err(err) => println!("  EHLO refused: {err}"),
        },
        Answers::XShadow => match reply.xshadow_database_id() {
            Ok(Some(id)) => println!("  XSHADOW accepted; primary database id {id}"),
            Ok(None) => println!("  XSHADOW refused: carry on without shadowing"),
            Err(err) => println!("  protocol breach: {err}"),
        },
        Answers::XqDiscard(max) => match reply.xqdiscard_ids(max) {
            Ok(ids) => println!("  {} discard ids: {:?}", ids.len(), ids),
            Err(err) => println!("  XQDISCARD failed: {err}"),
        },
        Answers::Greeting | Answers::Other => {}
    }
}
