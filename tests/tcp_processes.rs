//! Three `kv_server` processes on loopback TCP: writes through the client protocol, SIGKILL of
//! the leader process, a new leader and continued writes, a restart of the killed process, and
//! every node converging to the same state digest.
//!
//! The servers, their guard and the client calls are `common/processes.rs` (which says how the
//! `kv_server` example gets built). Each server keeps its state on disk (`--data`) in a
//! temporary directory the guard removes, so a killed process restarts from what it persisted.

#[path = "common/processes.rs"]
mod processes;

use std::path::PathBuf;
use std::process::Command;

use processes::kv_wire::{KvRequest, KvResponse};
use processes::{
    free_addr, kv_server_binary, put, until, wait_converged, wait_leader, Kind, Servers,
};

#[test]
fn three_processes_survive_the_leader_being_killed() {
    let mut servers = Servers::start(Kind::Example, 3);
    for i in 0..10 {
        put(&servers, &format!("k{i}"), &format!("v{i}"));
    }
    let old = wait_leader(&servers, None);
    servers.kill(old);
    let new = wait_leader(&servers, Some(old));
    assert_ne!(new, old);
    for i in 10..20 {
        put(&servers, &format!("k{i}"), &format!("v{i}"));
    }
    servers.restart(old); // from its directory: it catches up only what it missed
    put(&servers, "after-restart", "yes");
    // 21 puts, plus at least one no-op entry per leader term.
    let statuses = wait_converged(&servers, 23);
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    // Every process killed at once, then all restarted from their directories: nothing
    // acknowledged is lost, and they agree again.
    for id in 1..=3 {
        servers.kill(id);
    }
    for id in 1..=3 {
        servers.restart(id);
    }
    put(&servers, "after-full-restart", "yes");
    let after = wait_converged(&servers, statuses[0].applied + 2);
    assert_eq!(after.len(), 3, "{after:?}");
    let request = KvRequest::Get { key: "k3".into() };
    until(&servers, request, |a| *a == KvResponse::Value(Some("v3".into())));
}

#[test]
fn a_fourth_process_joins_and_one_of_the_first_three_leaves() {
    let mut servers = Servers::start(Kind::Example, 3);
    put(&servers, "before", "join");
    let addr = free_addr();
    servers.peers.insert(4, addr);
    servers.joiners.push(4); // --join: an empty configuration, waits to be added
    servers.spawn(4);
    until(&servers, KvRequest::AddNode { id: 4, addr }, |a| {
        *a == KvResponse::Members(vec![1, 2, 3, 4])
    });
    put(&servers, "after", "join");
    let statuses = wait_converged(&servers, 4);
    assert!(statuses.iter().all(|s| s.voters == [1, 2, 3, 4]), "{statuses:?}");
    // Remove a follower among the first three, then stop its process.
    let leader = wait_leader(&servers, None);
    let gone = (1..=3).find(|&id| id != leader).expect("a follower");
    let left: Vec<u64> = (1..=4).filter(|&id| id != gone).collect();
    until(&servers, KvRequest::RemoveNode { id: gone }, |a| {
        *a == KvResponse::Members(left.clone())
    });
    servers.kill(gone);
    put(&servers, "after", "leave");
    let statuses = wait_converged(&servers, 6);
    assert!(statuses.iter().all(|s| s.voters == left), "{statuses:?}");
}

#[test]
fn the_server_refuses_bad_command_lines_with_a_reason() {
    let binary = kv_server_binary();
    let addr = free_addr();
    let peers = format!("1={addr}");
    let file = std::env::temp_dir().join(format!("ferraft-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, b"a file, not a directory").expect("write a file");
    /// Removes the file when the test ends, also when it fails.
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(file.clone());
    let file_arg = file.to_string_lossy().into_owned();
    let missing = std::env::temp_dir().join(format!("ferraft-no-store-{}", std::process::id()));
    let missing_arg = missing.to_string_lossy().into_owned();
    let cases: [(&[&str], i32, &str); 7] = [
        (&["--peers", &peers], 2, "--id is required"),
        (&["--id", "x", "--peers", &peers], 2, "not a number"),
        (&["--id", "2", "--peers", &peers], 2, "no address for this node's id n2"),
        (&["--id", "1", "--peers", "1=nowhere"], 2, "--peers item 1=nowhere"),
        (&["--id", "1", "--peers", &peers, "--data", &file_arg], 1, "not a directory"),
        // A directory with no store: a first start says so, a voter wiped must be replaced.
        (&["--id", "1", "--peers", &peers, "--data", &missing_arg], 2, "holds no store"),
        (&["--id", "1", "--peers", &peers, "--join", "--bootstrap"], 2, "exclude each other"),
    ];
    for (args, code, reason) in cases {
        let out = Command::new(&binary).args(args).output().expect("run kv_server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert!(!missing.exists(), "a refused server created its directory");
}
