//! Embedding paxring: a replicated counter. Runs one node (a cluster of one) so that it works
//! anywhere: `cargo run --release -p paxring-engine --example embed`. Add `.peer(id, addr)` for
//! each other member to replicate for real.
use bytes::Bytes;
use paxring_engine::runtime::{Node, NodeConfig, StateMachine};
use paxring_engine::{GroupId, Instance};

/// The application's state: a sum of the numbers proposed to one group.
struct Sum(u64);

impl StateMachine for Sum {
    fn apply(
        &mut self,
        _group: GroupId,
        _instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        for command in commands {
            self.0 += std::str::from_utf8(command)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            results.push(Bytes::from(self.0.to_string()));
        }
    }
    fn checkpoint_instance(&self) -> Option<Instance> {
        None // Nothing durable of its own: after a restart the WAL is replayed from instance 0.
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = NodeConfig::builder(1, "127.0.0.1:0".parse()?, dir.path())
        .groups(4)
        .build()?;
    let node = Node::start(
        config,
        Box::new(|_group| Ok(Box::new(Sum(0)) as Box<dyn StateMachine>)),
    )?;
    for n in 1..=10u64 {
        loop {
            match node.propose_blocking(GroupId(0), Bytes::from(n.to_string())) {
                Ok(c) => {
                    break println!(
                        "{n} -> sum {} at instance {} index {}",
                        String::from_utf8_lossy(&c.result),
                        c.instance.0,
                        c.index
                    )
                }
                // No leader until the first election ends; a real client backs off and retries.
                Err(paxring_engine::runtime::Error::NotLeader { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let totals = node.stats().totals;
    if totals.write_rounds == 0 {
        println!("durable writes per round: not measured yet (no WAL write so far)");
    } else {
        println!(
            "durable writes per round: {}",
            totals.durable_writes_per_round
        );
    }
    node.shutdown()?;
    Ok(())
}
