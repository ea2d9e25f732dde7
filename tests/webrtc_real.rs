//! The SDP code against real webrtc-rs, no fake: a real offer is read (step 9), and the answer
//! written from servufrag (step 15) is accepted by a real PeerConnection (steps 16–17).

use callme::media::sdp::{build_answer, parse_offer};
use callme::media::{MediaEngine, RtcMedia};
use callme::wire::{check_fingerprint, check_ice_chars, ServUfrag};
use callme::AudioSource;

async fn offered() -> (RtcMedia, String) {
    let mut media = RtcMedia::default();
    media.get_user_media(AudioSource::tone(440.0)).await.expect("getUserMedia");
    media.create_peer_connection(&[]).await.expect("createPeerConnection");
    let sdp = media.create_offer().await.expect("createOffer");
    (media, sdp)
}

/// What a core would send in servufrag (valid values; no core listens).
fn servufrag(addr: Option<&str>) -> ServUfrag {
    ServUfrag {
        ufrag: "CoreUfrag".into(),
        pwd: "CorePasswordOf24Chars+/x".into(),
        fingerprint: format!("sha-256 {}", ["5A"; 32].join(":")),
        port: 40000,
        addr: addr.map(str::to_owned),
        candidates: vec![],
    }
}

#[tokio::test]
async fn a_real_offer_gives_every_callme_s2_field() {
    let (mut media, sdp) = offered().await;
    let f = parse_offer(&sdp).unwrap_or_else(|e| panic!("{e}\n{sdp}"));
    check_ice_chars(&f.ufrag, 4).unwrap();
    check_ice_chars(&f.pwd, 22).unwrap();
    check_fingerprint(&f.fingerprint).unwrap();
    assert_eq!(f.opus_pt, 111);
    assert!(!f.mid.is_empty());
    assert!(f.ext_audio_level.is_some(), "ssrc-audio-level offered:\n{sdp}");
    assert!(f.ext_mid.is_some(), "sdes:mid offered:\n{sdp}");
    assert!(f.ssrc.is_some(), "the offer declares its SSRC:\n{sdp}");
    media.close().await;
}

#[tokio::test]
async fn a_built_answer_is_accepted_by_a_real_peer_connection() {
    let (mut media, sdp) = offered().await;
    media.set_local_description(&sdp).await.expect("setLocalDescription");
    let offer = parse_offer(&sdp).unwrap();
    let core = servufrag(Some("127.0.0.1"));
    let answer = build_answer(&offer, &core, "127.0.0.1".parse().unwrap());
    media.set_remote_description(&answer).await.unwrap_or_else(|e| panic!("rejected: {e}\n{answer}"));
    media.close().await;
}

#[tokio::test]
async fn an_answer_without_a_fingerprint_is_rejected_by_a_real_peer_connection() {
    // The checks above can fail: webrtc-rs refuses an answer that does not match the offer.
    let (mut media, sdp) = offered().await;
    media.set_local_description(&sdp).await.expect("setLocalDescription");
    let offer = parse_offer(&sdp).unwrap();
    let core = servufrag(None);
    let answer: String = build_answer(&offer, &core, "127.0.0.1".parse().unwrap())
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("a=fingerprint"))
        .collect();
    assert!(media.set_remote_description(&answer).await.is_err(), "accepted:\n{answer}");
    media.close().await;
}
