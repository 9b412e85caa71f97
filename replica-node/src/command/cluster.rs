//! `CLUSTER NODES`, `CLUSTER MYID` and `CLUSTER FORGET` (design 4.5, 4.7): the cluster as this
//! node's gateway sees it, and removing a server that is gone for good.

use replica_core::Now;
use replica_core::gateway::MemberStatus;

use super::{Ctx, NodeInfo, help_reply, printable, unknown_subcommand};
use crate::runtime::AdminMsg;

pub(super) fn cluster(c: &mut Ctx<'_>) {
    let sub = &c.args[1];
    let is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
    if is("NODES") && c.args.len() == 2 {
        let text = nodes(&c.actor.info, c.now);
        c.out.bulk(text.as_bytes());
    } else if is("MYID") && c.args.len() == 2 {
        let id = c.actor.info.node.clone();
        c.out.bulk(id.as_bytes());
    } else if is("FORGET") && c.args.len() == 3 {
        forget(c);
    } else if is("HELP") {
        let lines = [
            "CLUSTER <subcommand>. Subcommands are:",
            "NODES",
            "    One line per server: id peer-address state last-contact-ms-ago",
            "    (state: self, connected, disconnected or replaced).",
            "MYID",
            "    This server's node id.",
            "FORGET <node-id>",
            "    Remove a server that is gone for good from the whole cluster.",
        ];
        help_reply(c, &lines);
    } else {
        unknown_subcommand(c, "CLUSTER", sub);
    }
}

/// The text of `CLUSTER NODES`.
fn nodes(info: &NodeInfo, now: Now) -> String {
    let members = info.stats.members();
    let mut text = String::new();
    if members.is_empty() {
        // The gateway has not published yet (the first moments of a node's life).
        text.push_str(&format!("{} {} self 0\n", info.node, info.peer_addr));
    }
    for m in members.iter() {
        let state = match m.status {
            MemberStatus::Myself => "self",
            MemberStatus::Connected => "connected",
            MemberStatus::Disconnected => "disconnected",
            MemberStatus::Replaced => "replaced",
        };
        let ago = match (m.status, m.last_contact) {
            (MemberStatus::Myself, _) => "0".to_owned(),
            (_, Some(at)) => now.mono_ms.saturating_sub(at).to_string(),
            (_, None) => "-".to_owned(),
        };
        let peer = if m.peer.is_empty() { "-" } else { &m.peer };
        text.push_str(&format!("{} {peer} {state} {ago}\n", m.node));
    }
    text
}

fn forget(c: &mut Ctx<'_>) {
    let info = &c.actor.info;
    let id = String::from_utf8_lossy(&c.args[2]).into_owned();
    if id == info.node {
        return c.error("ERR I tried hard but I can't forget myself...");
    }
    if !info.stats.members().iter().any(|m| m.node == id && m.status != MemberStatus::Myself) {
        return c.error(&format!("ERR unknown node {}", printable(&c.args[2], 64)));
    }
    let sent = info.admin.as_ref().is_some_and(|admin| admin.send(AdminMsg::Forget(id)).is_ok());
    if sent {
        c.ok();
    } else {
        c.error("ERR this node has no gateway running");
    }
}
