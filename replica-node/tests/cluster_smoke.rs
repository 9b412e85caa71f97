mod common;
use common::*;
use std::time::Duration;

#[test]
fn two_servers_sync() {
    let mut c = Cluster::new("smoke");
    c.add(2);
    c.add(2);
    c.wait_connected(Duration::from_secs(5));
    let cs = c.clients();
    cs[0][0].put("a", "1").unwrap();
    cs[1][1].put("b", "2").unwrap();
    for s in &cs {
        for cl in s {
            assert!(eventually(Duration::from_secs(2), || cl.list("").unwrap().len() == 2).is_some());
        }
    }
}
