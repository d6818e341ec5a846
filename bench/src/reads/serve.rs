//! The node side of the reads benchmark, inside each node process: the key-value state
//! machine (`apply` does puts and log gets, `query` does lease and read-index gets) and the
//! client listener on 127.0.0.1, one thread with a single-threaded runtime serving every
//! connection. The baseline request is answered on that same path from an in-process map,
//! without touching the engine.
//!
//! Owns: the listener thread (stopped and joined by [`Server::stop`]), its baseline map.
//! Never: forwards a request to another node (a `NotLeader` answer names the leader), or
//! listens anywhere but 127.0.0.1.

use super::wire::{self, KvCommand, Op, Status};
use crate::cluster::proto::KvSpec;
use bytes::Bytes;
use paxring_engine::runtime::{Committed, Error, Node, ReadMode, StateMachine};
use paxring_wal::{GroupId, Instance};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// One group's key-value store.
#[derive(Default)]
pub struct Kv {
    map: HashMap<u64, Bytes>,
}

impl StateMachine for Kv {
    fn apply(
        &mut self,
        _group: GroupId,
        _instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        for command in commands {
            match wire::decode_command(command) {
                Some(KvCommand::Put(key, value)) => {
                    self.map.insert(key, value);
                    results.push(Bytes::new());
                }
                Some(KvCommand::Get(key)) => {
                    results.push(self.map.get(&key).cloned().unwrap_or_default());
                }
                None => results.push(Bytes::new()),
            }
        }
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        None
    }

    fn query(&self, _group: GroupId, query: &[u8]) -> std::io::Result<Bytes> {
        let key = wire::decode_query(query).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a query is an 8-byte key")
        })?;
        Ok(self.map.get(&key).cloned().unwrap_or_default())
    }
}

/// The running client listener.
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves clients of `node` on a thread of its own; returns the
    /// address.
    pub fn start(node: Arc<Node>, kv: KvSpec) -> Result<(Server, SocketAddr), String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("client listener: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("client listener: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("client listener: {e}"))?;
        let groups = node.config().groups;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-clients".into())
            .spawn(move || serve(node, listener, kv, groups, stopped))
            .map_err(|e| format!("client listener thread: {e}"))?;
        Ok((
            Server {
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
        ))
    }

    /// Stops accepting, drops every connection and joins the thread (which then holds no
    /// reference to the node).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    kv: KvSpec,
    groups: u32,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client listener runtime: {e}");
            return;
        }
    };
    // The baseline: the same lookup as `Kv::query`, in a map of this thread's own.
    let baseline: Rc<HashMap<(u32, u64), Bytes>> = Rc::new(
        (0..groups)
            .flat_map(|g| (0..kv.keys_per_group).map(move |k| (g, k)))
            .map(|(g, k)| ((g, k), wire::preload_value(g, k, kv.value_bytes)))
            .collect(),
    );
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("client listener: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let node = node.clone();
                        let baseline = baseline.clone();
                        tokio::task::spawn_local(async move {
                            if let Err(e) = connection(stream, &node, &baseline).await {
                                eprintln!("client connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        eprintln!("client listener: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
            }
        }
    });
    // Dropping the LocalSet dropped every connection task and its node reference.
}

async fn connection(
    stream: tokio::net::TcpStream,
    node: &Node,
    baseline: &HashMap<(u32, u64), Bytes>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut head = [0u8; wire::REQUEST_HEAD];
    let mut out = Vec::with_capacity(4096);
    loop {
        match read.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = wire::decode_request_head(&head)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut value = vec![0u8; h.value_bytes];
        read.read_exact(&mut value).await?;
        let group = GroupId(h.group);
        let outcome: Result<Committed, Error> = match h.op {
            Op::Baseline => {
                out.clear();
                let v = baseline.get(&(h.group, h.key)).map_or(&[][..], |v| &v[..]);
                wire::encode_response(&mut out, Status::Ok, 0, v);
                write.write_all(&out).await?;
                continue;
            }
            Op::Lease => {
                node.read(
                    group,
                    Bytes::copy_from_slice(&h.key.to_le_bytes()),
                    ReadMode::Lease,
                )
                .await
            }
            Op::Index => {
                node.read(
                    group,
                    Bytes::copy_from_slice(&h.key.to_le_bytes()),
                    ReadMode::Index,
                )
                .await
            }
            Op::LogRead => node.propose(group, wire::get_command(h.key)).await,
            Op::Put => node.propose(group, wire::put_command(h.key, &value)).await,
        };
        out.clear();
        match outcome {
            Ok(committed) => wire::encode_response(&mut out, Status::Ok, 0, &committed.result),
            Err(Error::NotLeader { leader }) => {
                wire::encode_response(&mut out, Status::NotLeader, leader.unwrap_or(0), b"")
            }
            Err(Error::Overloaded) => wire::encode_response(&mut out, Status::Overloaded, 0, b""),
            Err(e) => wire::encode_response(&mut out, Status::Failed, 0, e.to_string().as_bytes()),
        }
        write.write_all(&out).await?;
    }
}

#[cfg(test)]
mod tests {
    //! Proves that the state machine's puts are what its log gets and its queries answer.
    use super::*;

    #[test]
    fn puts_are_read_by_gets_and_queries() {
        let mut kv = Kv::default();
        let mut results = Vec::new();
        let v = wire::preload_value(0, 5, 32);
        kv.apply(
            GroupId(0),
            Instance(0),
            &[
                wire::put_command(5, &v),
                wire::get_command(5),
                wire::get_command(6),
            ],
            &mut results,
        );
        assert_eq!(results, vec![Bytes::new(), v.clone(), Bytes::new()]);
        assert_eq!(kv.query(GroupId(0), &5u64.to_le_bytes()).unwrap(), v);
        assert!(kv.query(GroupId(0), b"bad").is_err());
    }
}
