//! Network namespaces for partition tests: each node of a local cluster in a namespace of its
//! own, joined to a bridge (in a "switch" namespace) by a veth pair, and this host joined to the
//! same bridge by one more pair so clients in the host namespace reach every node. Cutting a
//! node's link on the switch side partitions it from everyone; restoring it heals.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for benchmarking network devices
//! (RFC 2544): a /24 per lab, `.1`, `.2`, ... for the nodes and `.100` for the host. The
//! namespaces have no other interface and no default route, so nothing leaves them. Everything
//! is removed when the lab is dropped (deleting a namespace deletes its ends of the pairs).
//!
//! Needs root and `ip` from iproute2.

use std::process::Command;

/// Why a lab could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetLabError {
    #[error("cannot run `ip` (iproute2 installed? root?): {0}")]
    Spawn(std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
}

/// A set of namespaces: one per node plus the switch.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    subnet: u8,
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<(), NetLabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetLabError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetLabError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl NetLab {
    /// Creates the namespaces of `nodes` nodes, named after `tag` (a few characters; the
    /// process id keeps concurrent labs apart).
    pub fn create(tag: &str, nodes: usize) -> Result<NetLab, NetLabError> {
        assert!((1..=90).contains(&nodes), "1..=90 nodes per lab");
        let pid = std::process::id();
        let lab = NetLab {
            tag: format!("{tag}{}", pid % 100_000),
            subnet: (pid % 250) as u8 + 1,
            nodes,
        };
        // Leftovers of an earlier run with the same name (a crashed test) go first.
        lab.remove();
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), NetLabError> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Created inside the node's namespace, the switch end moved to the switch.
            let port = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
            ])?;
            ip(&["-n", &ns, "link", "set", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        // The host's end.
        let host = self.host_link();
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "phost",
        ])?;
        ip(&["link", "set", "phost", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "phost", "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", "phost", "up"])?;
        let addr = format!("{}/24", self.host_ip());
        ip(&["addr", "add", &addr, "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        Ok(())
    }

    fn switch(&self) -> String {
        format!("rpx{}-sw", self.tag)
    }

    fn host_link(&self) -> String {
        format!("rpx{}", self.tag)
    }

    /// The namespace node `i` runs in.
    pub fn namespace(&self, i: usize) -> String {
        format!("rpx{}-n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.subnet, i + 1)
    }

    /// The host's address on the lab's bridge (clients bind here).
    pub fn host_ip(&self) -> String {
        format!("198.18.{}.100", self.subnet)
    }

    /// Cuts node `i` off from every other node and from the host.
    pub fn isolate(&self, i: usize) -> Result<(), NetLabError> {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("p{i}"),
            "down",
        ])
    }

    /// Joins node `i` again.
    pub fn heal(&self, i: usize) -> Result<(), NetLabError> {
        ip(&["-n", &self.switch(), "link", "set", &format!("p{i}"), "up"])
    }

    fn remove(&self) {
        let _ = ip(&["link", "del", &self.host_link()]);
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.remove();
    }
}
