//! Real multi-rank groups on loopback (one thread per rank): rendezvous, collectives over
//! subgroups, point-to-point tags, and the failure modes: a rank that never joins, a rank that
//! dies mid-collective.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use shardline_comm::{rendezvous, Comm, CommError, Group, RendezvousConfig, Tag};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(port: u16, rank: usize, world: usize, timeout: Duration) -> RendezvousConfig {
    RendezvousConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size: world,
        timeout,
        group_blob: if rank == 0 { b"layout".to_vec() } else { vec![] },
    }
}

/// Runs `f(comm)` on `world` ranks, each in its own thread, and returns their results by rank.
fn with_group<T: Send>(world: usize, f: impl Fn(Comm) -> T + Sync) -> Vec<T> {
    let port = free_port();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let f = &f;
                s.spawn(move || f(rendezvous(&config(port, r, world, Duration::from_secs(20))).unwrap()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn collectives_agree_bit_for_bit_across_ranks() {
    let results = with_group(4, |comm| {
        assert_eq!(comm.group_blob(), b"layout");
        let r = comm.rank();
        // Two TP groups of two ({0,1}, {2,3}) and the whole world.
        let tp = Group::new(if r < 2 { vec![0, 1] } else { vec![2, 3] });
        let world = Group::new((0..4).collect());
        let mut x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.1 + r as f32).sin() * 1e3).collect();
        tp.all_reduce_sum(&comm, &mut x).unwrap();
        let mut y = vec![r as f32 + 1.0; 3];
        world.all_reduce_sum(&comm, &mut y).unwrap();
        let gathered = tp.all_gather(&comm, &vec![r as f32; r + 1]).unwrap();
        let b = world.broadcast(&comm, 2, if r == 2 { b"from two" } else { b"" }).unwrap();
        world.barrier(&comm).unwrap();
        (x, y, gathered, b)
    });
    assert_eq!(results[0].0, results[1].0, "TP group members hold identical sums");
    assert_eq!(results[2].0, results[3].0);
    assert_ne!(results[0].0, results[2].0);
    for (x, y, g, b) in &results {
        assert_eq!(y, &vec![10.0; 3]);
        assert_eq!(b, b"from two");
        assert_eq!(g.len(), 2);
        let _ = x;
    }
    assert_eq!(results[3].2, vec![vec![2.0; 3], vec![3.0; 4]]);
}

#[test]
fn tags_are_independent_streams() {
    with_group(2, |comm| {
        if comm.rank() == 0 {
            comm.send(1, Tag::Hidden, b"h1".to_vec()).unwrap();
            comm.send(1, Tag::Control, b"c1".to_vec()).unwrap();
            comm.send(1, Tag::Hidden, b"h2".to_vec()).unwrap();
        } else {
            assert_eq!(comm.recv(0, Tag::Control).unwrap(), b"c1");
            assert_eq!(comm.recv(0, Tag::Hidden).unwrap(), b"h1");
            assert_eq!(comm.recv(0, Tag::Hidden).unwrap(), b"h2");
        }
    });
}

#[test]
fn a_rank_that_never_joins_is_named_after_the_timeout() {
    let port = free_port();
    let start = Instant::now();
    let err = match rendezvous(&config(port, 0, 3, Duration::from_millis(500))) {
        Err(e) => e,
        Ok(_) => panic!("rendezvous cannot succeed without ranks 1 and 2"),
    };
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, CommError::MissingRanks { .. }));
    assert!(err.to_string().contains("ranks [1, 2] did not join"), "{err}");
    // And a worker whose rank 0 never appears.
    let err = rendezvous(&config(free_port(), 1, 2, Duration::from_millis(300))).err().unwrap();
    assert!(err.to_string().contains("rank 0 did not accept"), "{err}");
}

#[test]
fn a_dead_peer_fails_the_collective_instead_of_hanging() {
    let results = with_group(2, |comm| {
        let g = Group::new(vec![0, 1]);
        if comm.rank() == 1 {
            comm.abort();
            drop(comm);
            return String::new();
        }
        let start = Instant::now();
        let mut x = vec![1.0f32; 8];
        let err = g.all_reduce_sum(&comm, &mut x).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        err.to_string()
    });
    assert!(results[0].contains("rank 1"), "{}", results[0]);
}

#[test]
fn byte_gathers_and_a_peers_end_is_seen_without_a_message() {
    with_group(3, |comm| {
        let world = Group::new(vec![0, 1, 2]);
        let all = world.all_gather_bytes(&comm, format!("rank {}", comm.rank()).as_bytes()).unwrap();
        assert_eq!(all, vec![b"rank 0".to_vec(), b"rank 1".to_vec(), b"rank 2".to_vec()]);
        comm.check_connected(&[0, 1, 2]).unwrap();
        world.barrier(&comm).unwrap();
        if comm.rank() == 2 {
            comm.abort();
            return;
        }
        // Ranks 0 and 1 learn that rank 2 is gone by polling, as an NCCL wait does.
        let gone = shardline_comm::poll_until(Instant::now() + Duration::from_secs(10), || {
            Ok(comm.check_connected(&[0, 1, 2]).err())
        })
        .unwrap()
        .expect("rank 2's exit is seen within the deadline");
        assert!(matches!(gone, CommError::Disconnected { rank: 2 }), "{gone}");
        comm.check_connected(&[0, 1]).unwrap();
        // Neither leaves (closing its side) before the other has checked.
        Group::new(vec![0, 1]).barrier(&comm).unwrap();
    });
}
