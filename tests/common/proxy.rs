//! A TCP proxy between the daemon and the broker. It follows the MQTT
//! framing both ways, to tell which connection is which client and when a
//! keep-alive ping goes out, and it can drop a client's ping answers, as
//! newer Mosquitto releases (2.0.21 for one) do when that client's queue
//! is full (the Mosquitto here, 2.0.11, still queues them). Every other byte passes
//! unchanged and in order.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const CONNECT: u8 = 1;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;

/// One client connection through the proxy.
#[derive(Default)]
pub struct Conn {
    /// From its CONNECT.
    pub client_id: Mutex<Option<String>>,
    /// PINGREQs it sent.
    pub pings: AtomicUsize,
    /// Ping answers the broker sent it, dropped or not.
    pub answers: AtomicUsize,
    /// Ping answers still to drop.
    to_drop: AtomicUsize,
    pub dropped: AtomicUsize,
}

pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
}

impl Proxy {
    /// Listens on a free loopback port and carries every connection to
    /// `broker_port`.
    pub fn start(broker_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let c = Arc::clone(&conns);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let conn = Arc::new(Conn::default());
                c.lock().unwrap().push(Arc::clone(&conn));
                carry(client, broker, conn);
            }
        });
        Proxy { port, conns }
    }

    /// Every connection so far with this client id, oldest first.
    pub fn connections(&self, client_id: &str) -> Vec<Arc<Conn>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.client_id.lock().unwrap().as_deref() == Some(client_id))
            .cloned()
            .collect()
    }
}

impl Conn {
    /// Drops the next `n` ping answers the broker sends this client.
    pub fn drop_ping_answers(&self, n: usize) {
        self.to_drop.store(n, Ordering::SeqCst);
    }
}

fn carry(client: TcpStream, broker: TcpStream, conn: Arc<Conn>) {
    let (client_r, broker_w) = (
        client.try_clone().expect("clone"),
        broker.try_clone().expect("clone"),
    );
    let up = Arc::clone(&conn);
    std::thread::spawn(move || {
        pump(client_r, broker_w, |kind, body| {
            match kind {
                CONNECT => *up.client_id.lock().unwrap() = connect_client_id(body),
                PINGREQ => {
                    up.pings.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            true
        })
    });
    std::thread::spawn(move || {
        pump(broker, client, |kind, _| {
            if kind != PINGRESP {
                return true;
            }
            conn.answers.fetch_add(1, Ordering::SeqCst);
            let drop = conn
                .to_drop
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if drop {
                conn.dropped.fetch_add(1, Ordering::SeqCst);
            }
            !drop
        })
    });
}

/// Copies `from` to `to` packet by packet, each whole packet once it has
/// come in full, if `pass(type, body)` says so.
fn pump(mut from: TcpStream, mut to: TcpStream, mut pass: impl FnMut(u8, &[u8]) -> bool) {
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.clear();
        frames.feed(&buf[..n], |kind, raw, body| {
            if pass(kind, body) {
                out.extend_from_slice(raw);
            }
        });
        if to.write_all(&out).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Splits a byte stream into MQTT packets: (packet type, the whole packet,
/// its body after the fixed header).
#[derive(Default)]
struct Frames {
    raw: Vec<u8>,
    /// The body's offset in `raw` once the remaining length is read.
    body_at: Option<usize>,
    len: usize,
    shift: u32,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8], mut packet: impl FnMut(u8, &[u8], &[u8])) {
        while !bytes.is_empty() {
            match self.body_at {
                None if self.raw.is_empty() => {
                    (self.len, self.shift) = (0, 0);
                    self.raw.push(bytes[0]);
                    bytes = &bytes[1..];
                }
                None => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.raw.push(b);
                    self.len |= ((b & 0x7f) as usize) << self.shift;
                    self.shift += 7;
                    if b & 0x80 == 0 {
                        self.body_at = Some(self.raw.len());
                    }
                }
                Some(at) => {
                    let take = (at + self.len - self.raw.len()).min(bytes.len());
                    self.raw.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                }
            }
            if let Some(at) = self.body_at {
                if self.raw.len() == at + self.len {
                    packet(self.raw[0] >> 4, &self.raw, &self.raw[at..]);
                    self.raw.clear();
                    self.body_at = None;
                }
            }
        }
    }
}

/// The client id of a CONNECT body (MQTT 3.1.1 or 5).
fn connect_client_id(body: &[u8]) -> Option<String> {
    let name_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let level = *body.get(2 + name_len)?;
    // Level, flags, keep-alive.
    let mut at = 2 + name_len + 4;
    if level == 5 {
        let (mut props, mut shift) = (0usize, 0);
        loop {
            let b = *body.get(at)?;
            at += 1;
            props |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += props;
    }
    let id_len = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
    String::from_utf8(body.get(at + 2..at + 2 + id_len)?.to_vec()).ok()
}
