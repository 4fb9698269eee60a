//! Real multi-rank groups on loopback (one thread per rank): rendezvous, collectives over
//! subgroups, point-to-point tags, and the failure modes: a rank that never joins, a rank that
//! dies mid-collective.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use shardline_comm::{rendezvous, Comm, CommError, Group, GroupSecret, RendezvousConfig, Tag};

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
        secret: GroupSecret::from_text("comm-tests-group-secret").unwrap(),
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
            // `close` delivers the barrier message still queued (`abort` would drop it).
            comm.close();
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

/// Connects to `port` on loopback, retrying while nothing listens yet.
fn connect_soon(port: u16) -> std::net::TcpStream {
    let start = Instant::now();
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("nothing listens on {port}: {e}"),
        }
    }
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    [[tag].as_slice(), &(payload.len() as u64).to_le_bytes(), payload].concat()
}

fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    let mut payload = vec![0u8; u64::from_le_bytes(head[1..].try_into().unwrap()) as usize];
    s.read_exact(&mut payload).unwrap();
    payload
}

#[test]
fn strays_wrong_secrets_and_replayed_hellos_are_dropped_while_the_group_forms() {
    use std::io::Write;
    // A genuine rank 1's answer to one challenge, captured by a listener posing as rank 0.
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    let decoy_port = decoy.local_addr().unwrap().port();
    let captured = std::thread::scope(|s| {
        let member = s.spawn(|| rendezvous(&config(decoy_port, 1, 2, Duration::from_secs(5))));
        let (mut c, _) = decoy.accept().unwrap();
        c.write_all(&frame(0, &[b"SHRDLN01".as_slice(), &[7u8; 32]].concat())).unwrap();
        let answer = read_frame(&mut c);
        drop(c);
        let err = member.join().unwrap().err().expect("the decoy never proves the secret");
        assert!(err.to_string().contains("refused this rank"), "{err}");
        answer
    });

    let port = free_port();
    let ok = std::thread::scope(|s| {
        let rank0 = s.spawn(|| rendezvous(&config(port, 0, 2, Duration::from_secs(20))));
        // Garbage, a frame claiming 2^64 bytes, and the captured answer replayed to a new challenge.
        // (Held open until the group forms, so rank 0 reads what they sent.)
        let mut garbage = connect_soon(port);
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut huge = connect_soon(port);
        huge.write_all(&[0, 255, 255, 255, 255, 255, 255, 255, 255]).unwrap();
        let mut replay = connect_soon(port);
        read_frame(&mut replay);
        replay.write_all(&frame(0, &captured)).unwrap();
        // A process with the wrong secret is refused and told so.
        let mut wrong = config(port, 1, 2, Duration::from_secs(10));
        wrong.secret = GroupSecret::from_text("not-this-groups-secret").unwrap();
        let err = rendezvous(&wrong).err().expect("a wrong secret cannot join");
        assert!(err.to_string().contains("refused this rank"), "{err}");
        // The real rank 1 still joins, and the group works.
        let rank1 = s.spawn(|| rendezvous(&config(port, 1, 2, Duration::from_secs(20))));
        let comms = [rank0.join().unwrap().unwrap(), rank1.join().unwrap().unwrap()];
        drop((garbage, huge, replay));
        std::thread::scope(|t| {
            let sums: Vec<_> = comms
                .iter()
                .map(|c| {
                    t.spawn(move || {
                        let mut x = vec![1.0f32 + c.rank() as f32; 4];
                        Group::new(vec![0, 1]).all_reduce_sum(c, &mut x).unwrap();
                        x
                    })
                })
                .collect();
            sums.into_iter().all(|h| h.join().unwrap() == vec![3.0; 4])
        })
    });
    assert!(ok, "the group formed despite the strays and sums correctly");
}
