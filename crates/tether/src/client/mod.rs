//! Clients: WebSocket (`ws://`).

pub mod ws;
