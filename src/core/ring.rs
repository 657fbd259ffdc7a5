//! Ring order for the election: who gets the token next, and who should start an election
//! first. The election's rules (one participation per epoch, majority, best log wins) are in
//! `node::election`; this module only knows the ring.

use super::NodeId;

/// The node after `me` on the ring (members sorted by id) that should get the token: the first
/// `alive` one, or `home` (the initiator) if the walk reaches it first. None if no one is left.
pub fn next_hop(
    members: &[NodeId],
    me: NodeId,
    home: NodeId,
    alive: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let pos = members.iter().position(|&m| m == me)?;
    let n = members.len();
    (1..n)
        .map(|k| members[(pos + k) % n])
        .find(|&c| c == home || alive(c))
        .filter(|&c| c != me)
}

/// Ring distance from `from` to `to` (1 for the immediate successor); 0 if either is unknown.
pub fn distance(members: &[NodeId], from: NodeId, to: NodeId) -> usize {
    let (Some(a), Some(b)) = (
        members.iter().position(|&m| m == from),
        members.iter().position(|&m| m == to),
    ) else {
        return 0;
    };
    (b + members.len() - a) % members.len()
}

/// Votes needed for a majority of `n` members.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_skips_dead_successors_and_returns_home() {
        let ring = [1, 2, 3, 4, 5];
        assert_eq!(next_hop(&ring, 1, 1, |_| true), Some(2));
        assert_eq!(next_hop(&ring, 1, 1, |n| n != 2), Some(3));
        assert_eq!(next_hop(&ring, 5, 3, |_| true), Some(1));
        // Dead nodes between here and the initiator are skipped; the initiator ends the walk.
        assert_eq!(next_hop(&ring, 4, 2, |n| n == 2), Some(2));
        assert_eq!(next_hop(&ring, 4, 2, |_| false), Some(2));
        // Alone: nowhere to go.
        assert_eq!(next_hop(&ring, 3, 3, |_| false), None);
        assert_eq!(next_hop(&[7], 7, 7, |_| true), None);
    }

    #[test]
    fn distance_and_majority() {
        let ring = [1, 2, 3];
        assert_eq!(distance(&ring, 3, 1), 1);
        assert_eq!(distance(&ring, 1, 3), 2);
        assert_eq!(distance(&ring, 1, 1), 0);
        assert_eq!(
            (
                majority(1),
                majority(2),
                majority(3),
                majority(4),
                majority(5)
            ),
            (1, 2, 2, 3, 3)
        );
    }
}
