//! A client of `kv_server`: talks to any node and follows the leader's hint.
//!
//! ```text
//! kv_client --server 127.0.0.1:7001 [--cluster-id 1] [--secret S] put KEY VALUE
//! kv_client --server 127.0.0.1:7001 get KEY
//! kv_client --server 127.0.0.1:7001 status
//! kv_client --server 127.0.0.1:7001 add 4 127.0.0.1:7004   # a `kv_server --join` process
//! kv_client --server 127.0.0.1:7001 remove 2
//! ```
//!
//! `put` and `get` print the key's value after the command (`get` reads through the log);
//! `status` prints the contacted node's role, term, leader, commit and applied indexes,
//! voters and state digest. Exit status 1 on failure, with the reason on stderr.

use std::net::SocketAddr;
use std::time::Duration;

#[path = "common/kv_wire.rs"]
mod kv_wire;

use kv_wire::{KvClient, KvRequest, KvResponse};

const USAGE: &str = "usage: kv_client --server HOST:PORT [--cluster-id N] [--secret S] (put KEY VALUE | get KEY | status | add ID HOST:PORT | remove ID)";

fn main() {
    match run() {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("kv_client: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<String, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut server: Option<SocketAddr> = None;
    let (mut cluster_id, mut secret) = (1u64, None::<String>);
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        let value = if args.is_empty() {
            return Err(format!("{flag} needs a value\n{USAGE}"));
        } else {
            args.remove(0)
        };
        match flag.as_str() {
            "--server" => {
                server = Some(value.parse().map_err(|e| format!("--server {value}: {e}"))?)
            }
            "--cluster-id" => {
                cluster_id =
                    value.parse().map_err(|_| format!("--cluster-id {value}: not a number"))?
            }
            "--secret" => secret = Some(value),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let server = server.ok_or(format!("--server is required\n{USAGE}"))?;
    let request = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["put", key, value] => KvRequest::Put { key: key.to_string(), value: value.to_string() },
        ["get", key] => KvRequest::Get { key: key.to_string() },
        ["status"] => KvRequest::Status,
        ["add", id, addr] => KvRequest::AddNode {
            id: id.parse().map_err(|_| format!("add {id}: not a node id"))?,
            addr: addr.parse().map_err(|e| format!("add {id} {addr}: {e}"))?,
        },
        ["remove", id] => KvRequest::RemoveNode {
            id: id.parse().map_err(|_| format!("remove {id}: not a node id"))?,
        },
        _ => return Err(USAGE.into()),
    };
    let mut client = KvClient::connect(server, cluster_id, secret.as_deref().map(str::as_bytes))?;
    let answer = if request == KvRequest::Status {
        client.call(&request)?
    } else {
        client.request(&request, Duration::from_secs(30))?
    };
    match answer {
        KvResponse::Value(Some(value)) => Ok(value),
        KvResponse::Value(None) => Ok("(none)".into()),
        KvResponse::Status(s) => Ok(format!(
            "n{} {} term {} leader {} commit {} applied {} voters {:?} digest {:016x}",
            s.id,
            s.role,
            s.term,
            s.leader.map_or("none".into(), |l| format!("n{l}")),
            s.commit,
            s.applied,
            s.voters,
            s.digest
        )),
        KvResponse::Members(voters) => Ok(format!("voters {voters:?}")),
        KvResponse::NotLeader { .. } => Err("no leader known yet; retry shortly".into()),
        KvResponse::Error(e) => Err(e),
    }
}
