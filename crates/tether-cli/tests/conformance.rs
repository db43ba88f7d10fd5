//! The in-project WebSocket conformance suite, modelled on the case groups of
//! Autobahn|Testsuite (which needs Python 2 or Docker, neither available
//! here). Each group starts the real `tether serve` binary (one process per
//! group, with the group's options), speaks raw TCP with its own masked frame
//! encoder, and asserts the exact outcome: echoed messages, pong payloads,
//! the close code the server sends and that it then closes TCP. At the end
//! of a group the server must still answer `/healthz` and exit 0 on SIGTERM.
//!
//! Groups (Autobahn numbering): 1 framing, 2 ping/pong, 3 reserved bits,
//! 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close handling, 9 limits, 10
//! auto-fragmentation, 12-13 permessage-deflate, plus the HTTP handshake.
//!
//! A case that fails because of a known server bug is marked with
//! `Case::bug` in its table (the group skips it) and gets an
//! `#[ignore = "bug: ..."]` test below that runs it alone.
//!
//! Run: `cargo test -p tether-cli --test conformance` (add `-- --nocapture`
//! for the per-group summary lines).

mod conformance {
    pub mod close;
    pub mod deflate;
    pub mod fragmentation;
    pub mod framing;
    pub mod handshake;
    pub mod harness;
    pub mod limits;
    pub mod utf8;
}

use conformance::harness::run_group;
use conformance::*;

#[test]
fn group_01_framing() {
    run_group(framing::framing());
}

#[test]
fn group_02_ping_pong() {
    run_group(framing::ping_pong());
}

#[test]
fn group_03_reserved_bits() {
    run_group(framing::reserved_bits());
}

#[test]
fn group_04_opcodes() {
    run_group(framing::opcodes());
}

#[test]
fn group_05_fragmentation() {
    run_group(fragmentation::fragmentation());
}

#[test]
fn group_06_utf8() {
    run_group(utf8::utf8());
}

#[test]
fn group_07_close() {
    run_group(close::close());
}

#[test]
fn group_09_limits_1mib() {
    run_group(limits::limits_1mib());
}

#[test]
fn group_09_10_large_messages() {
    run_group(limits::large_messages());
}

#[test]
fn group_12_13_deflate_shared() {
    run_group(deflate::deflate_shared());
}

#[test]
fn group_13_deflate_context() {
    run_group(deflate::deflate_context());
}

#[test]
fn group_13_deflate_off() {
    run_group(deflate::deflate_off());
}

#[test]
fn handshake() {
    run_group(handshake::handshake());
}

#[test]
fn handshake_origin() {
    run_group(handshake::origin());
}
