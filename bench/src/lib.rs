//! Shared bits of the reference servers: command-line parsing and the
//! runtime choice, identical for every peer so they differ only in the
//! library under test.

use std::net::SocketAddr;

/// `--listen ADDR` (default 127.0.0.1:8080) and `--workers N` (default 1;
/// 1 means a current-thread runtime, like `tether serve --workers 1`).
/// Unknown flags are rejected.
pub struct Args {
    pub listen: SocketAddr,
    pub workers: usize,
}

impl Args {
    pub fn parse(name: &str) -> Args {
        let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("static");
        let mut workers = 1usize;
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (a.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next()).unwrap_or_else(|| usage(name, &a));
            match key.as_str() {
                "--listen" => listen = value().parse().unwrap_or_else(|_| usage(name, &a)),
                "--workers" => workers = value().parse().unwrap_or_else(|_| usage(name, &a)),
                "-h" | "--help" => usage(name, ""),
                _ => usage(name, &a),
            }
        }
        Args {
            listen,
            workers: workers.max(1),
        }
    }

    /// A current-thread runtime for one worker, else a multi-thread one.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        if self.workers == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.workers)
                .enable_all()
                .build()
        }
        .expect("building the tokio runtime")
    }

    /// Binds the listener and announces it on stderr like `tether serve`.
    pub async fn bind(&self) -> tokio::net::TcpListener {
        let listener = tokio::net::TcpListener::bind(self.listen).await.unwrap_or_else(|e| {
            eprintln!("cannot bind {}: {e}", self.listen);
            std::process::exit(1)
        });
        let addr = listener.local_addr().expect("local address");
        eprintln!("listening on http://{addr}");
        listener
    }
}

fn usage(name: &str, bad: &str) -> ! {
    if !bad.is_empty() {
        eprintln!("{name}: bad argument {bad:?}");
    }
    eprintln!("usage: {name} [--listen ADDR] [--workers N]");
    std::process::exit(2)
}
