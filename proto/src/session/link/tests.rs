//! Unit tests of the link handshake machines (both sides in memory, fixed nonces).

use super::*;

fn secrets(b: u8) -> LinkSecrets {
    LinkSecrets::new(vec![vec![b; 32]]).unwrap()
}

/// Runs a whole handshake: the dialer's error, the acceptor's error, or the worker id.
fn run(
    gw: LinkSecrets,
    wk: LinkSecrets,
    dialed: &str,
    address: &str,
) -> Result<String, (Option<AuthFailure>, Option<AuthFailure>)> {
    let (mut d, hello) = Dialer::new(gw, "G1", dialed, [1; 32]);
    let mut a = Acceptor::new(wk, "W1", address, [2; 32]);
    let AcceptorStep::Reply(ok) = a.on_frame(hello).unwrap() else { panic!("no HelloOk") };
    let proof = match d.on_frame(ok) {
        Ok(DialerStep::Reply(p)) => *p,
        Ok(other) => panic!("{other:?}"),
        Err(e) => return Err((Some(e), None)),
    };
    assert_eq!(d.claimed_worker(), Some("W1"));
    let up = match a.on_frame(proof) {
        Ok(AcceptorStep::Authenticated { gateway_id, reply }) => {
            assert_eq!(gateway_id, "G1");
            reply
        }
        Ok(other) => panic!("{other:?}"),
        Err(e) => {
            // The worker tells the gateway, which fails too.
            let told = d.on_frame(refused_frame(&e)).unwrap_err();
            assert!(matches!(told, AuthFailure::RefusedByPeer(_)), "{told:?}");
            return Err((None, Some(e)));
        }
    };
    match d.on_frame(up) {
        Ok(DialerStep::Linked { worker_id }) => Ok(worker_id),
        other => panic!("{other:?}"),
    }
}

#[test]
fn same_secret_authenticates_both_ways() {
    assert_eq!(run(secrets(7), secrets(7), "127.0.0.1:1", "127.0.0.1:1").unwrap(), "W1");
}

#[test]
fn wrong_secret_is_refused_by_the_gateway_before_it_proves_anything() {
    // The gateway checks first and sends no proof of its own.
    assert_eq!(run(secrets(7), secrets(8), "a:1", "a:1"), Err((Some(AuthFailure::BadProof), None)));
    // A gateway that accepts the worker's secret but proves with another one is refused by
    // the worker.
    let proves_8 = LinkSecrets::new(vec![vec![8; 32], vec![7; 32]]).unwrap();
    assert_eq!(run(proves_8, secrets(7), "a:1", "a:1"), Err((None, Some(AuthFailure::BadProof))));
}

#[test]
fn a_rotated_secret_list_accepts_old_and_new() {
    // Rotation from 7 to 8 in three rolling steps: "old" -> "old,new" -> "new,old" -> "new".
    let old_new = LinkSecrets::new(vec![vec![7; 32], vec![8; 32]]).unwrap();
    let new_old = LinkSecrets::new(vec![vec![8; 32], vec![7; 32]]).unwrap();
    let steps = [secrets(7), old_new, new_old, secrets(8)];
    let ok = |a: &LinkSecrets, b: &LinkSecrets| run(a.clone(), b.clone(), "a:1", "a:1").is_ok();
    for pair in steps.windows(2) {
        // Any two neighbouring steps link, in both roles, and each step with itself.
        assert!(ok(&pair[0], &pair[1]) && ok(&pair[1], &pair[0]) && ok(&pair[0], &pair[0]));
    }
    // Skipping a step does not: "old" does not accept a node proving with "new".
    assert!(!ok(&steps[0], &steps[2]) && !ok(&steps[2], &steps[0]));
    assert!(!ok(&steps[0], &steps[3]));
}

#[test]
fn a_relayed_worker_proof_is_refused() {
    // The gateway dialed a relay at r:1; the real worker proved its own address w:1.
    let linked = run(secrets(7), secrets(7), "r:1", "w:1");
    assert!(matches!(linked, Err((Some(AuthFailure::AddressMismatch { .. }), None))), "{linked:?}");
}

#[test]
fn a_gateway_without_the_secret_cannot_complete() {
    let mut a = Acceptor::new(secrets(7), "W1", "a:1", [2; 32]);
    let (_, hello) = Dialer::new(secrets(9), "G1", "a:1", [1; 32]);
    assert!(matches!(a.on_frame(hello), Ok(AcceptorStep::Reply(_))));
    assert_eq!(a.claimed_gateway(), Some("G1"));
    // A forged proof (all zeros), then anything: refused, and it stays refused.
    let forged = frame(Body::HelloProof(link::HelloProof { proof: vec![0; 32].into() }));
    assert_eq!(a.on_frame(forged.clone()), Err(AuthFailure::BadProof));
    assert_eq!(a.on_frame(forged), Err(AuthFailure::BadProof));
}

#[test]
fn requests_and_old_hellos_before_authentication_are_refused() {
    let request = frame(Body::Request(link::Request::default()));
    let mut a = Acceptor::new(secrets(7), "W1", "a:1", [2; 32]);
    assert_eq!(a.on_frame(request.clone()), Err(AuthFailure::Unexpected { got: "Request" }));
    let mut a = Acceptor::new(secrets(7), "W1", "a:1", [2; 32]);
    let v1 = frame(Body::Hello(link::Hello {
        gateway_id: "G1".into(),
        version: 1,
        nonce: Default::default(),
    }));
    assert_eq!(a.on_frame(v1), Err(AuthFailure::Version { got: 1 }));
    // A Request between Hello and HelloProof.
    let mut a = Acceptor::new(secrets(7), "W1", "a:1", [2; 32]);
    let (_, hello) = Dialer::new(secrets(7), "G1", "a:1", [1; 32]);
    a.on_frame(hello).unwrap();
    assert_eq!(a.on_frame(request), Err(AuthFailure::Unexpected { got: "Request" }));
    // A gateway refuses pushes before HelloOk.
    let (mut d, _) = Dialer::new(secrets(7), "G1", "a:1", [1; 32]);
    let push = frame(Body::Push(link::Push::default()));
    assert_eq!(d.on_frame(push), Err(AuthFailure::Unexpected { got: "Push" }));
}

#[test]
fn proofs_depend_on_every_transcript_field() {
    let s = secrets(7);
    let base = Transcript {
        gateway_id: "G1",
        worker_id: "W1",
        address: "a:1",
        nonce_g: &[1; 32],
        nonce_w: &[2; 32],
    };
    let p = s.prove(WORKER_LABEL, &base);
    assert_ne!(p, s.prove(GATEWAY_LABEL, &base), "directions are separated");
    let variants = [
        Transcript { gateway_id: "G2", ..base },
        Transcript { worker_id: "W2", ..base },
        Transcript { address: "a:2", ..base },
        Transcript { nonce_g: &[3; 32], ..base },
        Transcript { nonce_w: &[3; 32], ..base },
        // Moving a byte between adjacent fields changes the proof (length prefixes).
        Transcript { gateway_id: "G1W", worker_id: "1", ..base },
    ];
    for v in variants {
        assert!(!s.verify(WORKER_LABEL, &v, &p));
    }
    assert!(s.verify(WORKER_LABEL, &base, &p));
}

#[test]
fn secrets_are_checked_and_never_printed() {
    assert_eq!(LinkSecrets::new(vec![]).unwrap_err(), SecretError::Empty);
    assert_eq!(
        LinkSecrets::new(vec![vec![1; 32], vec![1; 31]]).unwrap_err(),
        SecretError::TooShort { index: 2, len: 31 }
    );
    let s = LinkSecrets::new(vec![b"0123456789abcdef0123456789abcdef".to_vec()]).unwrap();
    assert!(!format!("{s:?}").contains("0123"));
    assert!(!s.is_insecure());
    assert!(LinkSecrets::insecure_development().is_insecure());
}
