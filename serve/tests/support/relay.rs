//! A TCP relay to PostgreSQL that a test can cut: `Down` refuses new connections and severs the
//! open ones, `Silent` accepts connections and never answers (a peer that hangs). The database
//! behind it is the real one; only the network between is faulty.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::postgres_url;

pub struct Relay {
    port: u16,
    mode: Arc<Mutex<RelayMode>>,
    /// Bumped on every cut: a connection relayed in an older generation ends.
    generation: Arc<AtomicU64>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum RelayMode {
    Up,
    Down,
    Silent,
}

impl Relay {
    /// A relay on a free loopback port to the PostgreSQL server of [`postgres_url`], up.
    pub fn new() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url: postgres::Config = postgres_url().parse().unwrap();
        let pg_port = url.get_ports().first().copied().unwrap_or(5432);
        let mode = Arc::new(Mutex::new(RelayMode::Up));
        let generation = Arc::new(AtomicU64::new(0));
        let (m, g) = (mode.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let current = *m.lock().unwrap();
                match current {
                    RelayMode::Down => drop(client),
                    RelayMode::Silent => {
                        // Hold it open, say nothing.
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(600));
                            drop(client);
                        });
                    }
                    RelayMode::Up => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", pg_port)) else {
                            continue;
                        };
                        let born = g.load(Ordering::SeqCst);
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let g = g.clone();
                            std::thread::spawn(move || pump(from, to, &g, born));
                        }
                    }
                }
            }
        });
        Relay {
            port,
            mode,
            generation,
        }
    }

    /// The PostgreSQL URL through the relay (with short timeouts, so tests need not wait long).
    pub fn url(&self) -> String {
        let url: postgres::Config = postgres_url().parse().unwrap();
        let user = url.get_user().unwrap_or("postgres");
        let db = url.get_dbname().unwrap_or("streampulse");
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?connect_timeout=2",
            self.port
        )
    }

    pub fn set(&self, mode: RelayMode) {
        *self.mode.lock().unwrap() = mode;
        if mode != RelayMode::Up {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to` until either side closes or the relay is cut (a new generation).
fn pump(mut from: TcpStream, mut to: TcpStream, generation: &AtomicU64, born: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != born {
            break; // cut
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
