//! Small helpers for the integration tests: a dispatcher that echoes, driven by hand.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pygev_core::{Backlog, Command, Config, Event, Protocol, Raw, Running, Server};

/// A started core server and the bookkeeping a dispatcher keeps.
pub struct Harness {
    pub server: Server,
    pub running: Running,
    /// (loop, token) -> connection id and counters, for open connections.
    pub conns: HashMap<(u32, u32), (u64, Arc<Backlog>)>,
    pub log: Vec<String>,
    /// Messages are echoed back (else logged as `message ID BYTES`).
    pub echo: bool,
}

impl Harness {
    pub fn start(config: Config) -> Harness {
        Harness::start_with(config, Arc::new(Raw))
    }

    /// A server listening on `address`.
    pub fn start_at(address: &str, config: Config) -> Harness {
        Harness::run(Server::bind(address, config, Arc::new(Raw)).unwrap(), true)
    }

    /// A server running `protocol` (its messages are echoed as payloads, packed again).
    pub fn start_with(config: Config, protocol: Arc<dyn Protocol>) -> Harness {
        Harness::run(Server::bind("127.0.0.1:0", config, protocol).unwrap(), true)
    }

    /// A server without a listener, whose loops serve what it dials; it logs messages
    /// instead of echoing them.
    pub fn dialer(config: Config) -> Harness {
        let server = Server::without_listener(config, Arc::new(Raw)).unwrap();
        Harness::run(server, false)
    }

    fn run(mut server: Server, echo: bool) -> Harness {
        let running = server.start().unwrap();
        Harness {
            server,
            running,
            conns: HashMap::new(),
            log: Vec::new(),
            echo,
        }
    }

    pub fn port(&self) -> u16 {
        self.server
            .local_addr()
            .and_then(|a| a.as_inet())
            .expect("a TCP server")
            .port()
    }

    /// Handles the events that come within `time` (two harnesses in one thread take turns).
    pub fn pump_for(&mut self, time: Duration) {
        let until = Instant::now() + time;
        let mut batch = Vec::new();
        let mut due = Vec::new();
        while Instant::now() < until {
            self.server
                .queue()
                .wait(&mut batch, &mut due, Duration::from_millis(5));
            for event in batch.drain(..) {
                self.handle(event);
            }
        }
    }

    /// Handles events for up to `budget`, echoing every message; returns when `done` holds.
    pub fn pump_until(&mut self, budget: Duration, mut done: impl FnMut(&Harness) -> bool) {
        let give_up = Instant::now() + budget;
        let mut batch = Vec::new();
        let mut due = Vec::new();
        while !done(self) {
            assert!(
                Instant::now() < give_up,
                "timed out; log so far: {:?}",
                self.log
            );
            self.server
                .queue()
                .wait(&mut batch, &mut due, Duration::from_millis(20));
            for event in batch.drain(..) {
                self.handle(event);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        self.credit(&event);
        match event {
            Event::Connect {
                loop_index,
                token,
                info,
            } => {
                self.conns
                    .insert((loop_index, token), (info.id, info.backlog));
                let way = if info.outgoing { "dialed" } else { "connect" };
                self.log.push(format!("{way} {}", info.id));
            }
            Event::ConnectFailed { id, error, .. } => {
                self.log
                    .push(format!("connect failed {id}: {:?}", error.kind()));
            }
            Event::Message {
                loop_index,
                token,
                data,
                ..
            } if !self.echo => {
                let id = self.conns[&(loop_index, token)].0;
                let text = String::from_utf8_lossy(&data).into_owned();
                self.log.push(format!("message {id} {text}"));
            }
            Event::Message {
                loop_index,
                token,
                data,
                kind,
            } => {
                let id = self.conns[&(loop_index, token)].0;
                let handle = &self.running.loops()[loop_index as usize];
                handle
                    .post(Command::Send {
                        token,
                        id,
                        data,
                        packed: false,
                        kind,
                    })
                    .unwrap();
            }
            Event::Messages {
                loop_index,
                token,
                frames,
            } if !self.echo => {
                let id = self.conns[&(loop_index, token)].0;
                for frame in frames.iter() {
                    let text = String::from_utf8_lossy(frame).into_owned();
                    self.log.push(format!("message {id} {text}"));
                }
            }
            Event::Messages {
                loop_index,
                token,
                frames,
            } => {
                let id = self.conns[&(loop_index, token)].0;
                let handle = &self.running.loops()[loop_index as usize];
                for (index, data) in frames.iter().enumerate() {
                    handle
                        .post(Command::Send {
                            token,
                            id,
                            data: data.to_vec(),
                            packed: false,
                            kind: frames.kind(index),
                        })
                        .unwrap();
                }
            }
            Event::PeerClosed { loop_index, token } => {
                let id = self.conns[&(loop_index, token)].0;
                self.running.loops()[loop_index as usize]
                    .post(Command::Close { token, id })
                    .unwrap();
            }
            Event::Closed { loop_index, token } => {
                let id = self.conns.remove(&(loop_index, token)).unwrap().0;
                self.log.push(format!("closed {id}"));
            }
            Event::Signal {
                loop_index,
                token,
                signal,
            } => {
                let id = self.conns[&(loop_index, token)].0;
                self.log.push(format!("signal {id} {signal:?}"));
            }
            Event::Drained { loop_index, token } => {
                let id = self.conns[&(loop_index, token)].0;
                self.log.push(format!("drained {id}"));
            }
            Event::Quiesced { loop_index } => self.log.push(format!("quiesced {loop_index}")),
            Event::LoopExited { loop_index } => self.log.push(format!("exited {loop_index}")),
        }
    }

    /// Takes a handled event's cost off dispatch backpressure, as the real dispatcher does:
    /// every event for its loop, messages for their connection too.
    fn credit(&self, event: &Event) {
        if let Event::LoopExited { .. } = event {
            return;
        }
        let (loop_index, token) = event.source();
        let cost = event.dispatch_cost();
        let handle = &self.running.loops()[loop_index as usize];
        handle.dispatched(cost, usize::MAX).unwrap();
        if event.is_message() {
            let backlog = match (token, event) {
                (Some(token), _) => self.conns.get(&(loop_index, token)).map(|c| &c.1),
                _ => None,
            };
            if let (Some(backlog), Some(token)) = (backlog, token) {
                if backlog.dispatched(cost, usize::MAX / 2) {
                    let id = self.conns[&(loop_index, token)].0;
                    handle.post(Command::Unthrottle { token, id }).unwrap();
                }
            }
        }
    }

    /// Runs the orderly shutdown and joins the threads.
    pub fn shutdown(mut self) -> Vec<String> {
        let loops = self.running.loops().len();
        self.running.stop_accepting();
        self.running.quiesce();
        self.pump_until(Duration::from_secs(10), |h| {
            h.log.iter().filter(|l| l.starts_with("quiesced")).count() == loops
        });
        self.running.drain(Instant::now() + Duration::from_secs(5));
        self.pump_until(Duration::from_secs(10), |h| {
            h.log.iter().filter(|l| l.starts_with("exited")).count() == loops
        });
        self.running.join();
        self.log
    }
}
