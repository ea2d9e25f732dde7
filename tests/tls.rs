//! `wss://` end to end: the reference core serves TLS with a certificate signed by a CA the test
//! makes; SDK parties that trust that CA join and hear each other, and one that does not trust it
//! fails at opening the WebSocket with the certificate problem named.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use callme::audio::tone_share;
use callme::core::{self, CoreConfig, CoreHandle};
use callme::media::{RtcMedia, RtcOptions};
use callme::{AudioSource, ClusterId, ConnectOptions, Connected, SchemeId, Session, Stage, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, format!("callme test CA {name}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server_params.distinguished_name.push(DnType::CommonName, "callme test core");
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();

    let dir = std::env::temp_dir().join(format!("callme-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("core.pem"), dir.join("core.key"));
    std::fs::write(&cert, server.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    Pki { ca_pem: ca.pem(), cert, key }
}

async fn start_tls_core(pki: &Pki) -> CoreHandle {
    let config = CoreConfig::loopback_ephemeral().with(|c| {
        c.tls_cert = Some(pki.cert.clone());
        c.tls_key = Some(pki.key.clone());
    });
    core::start(config).await.expect("the core starts with TLS")
}

fn trusting(pki: &Pki) -> ConnectOptions {
    ConnectOptions::default().with_tls(TlsOptions::new().without_system_roots().add_root_pem(pki.ca_pem.as_bytes()).unwrap())
}

async fn join(url: &str, options: &ConnectOptions, name: &str, hz: f32) -> Connected {
    let session = Session::connect_with_options(url, options).await.unwrap_or_else(|e| panic!("{name} opens {url}: {e}"));
    let party = session.load(ClusterId(1), SchemeId(7), name).await.unwrap();
    party.join_with(RtcMedia::new(RtcOptions::loopback_only()), AudioSource::tone(hz)).await.unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

/// The share of each of `tones` in what `call` hears, after a settling second: the median over
/// 100 ms windows, so a gap or a concealed packet on a loaded machine does not hide a tone that
/// is there, while a tone that is absent stays near 0 in every window.
async fn hear(call: &mut Connected, tones: &[f32]) -> Vec<f64> {
    call.listen(Duration::from_millis(1000)).await.expect("settles");
    let heard = call.listen(Duration::from_millis(1500)).await.expect("hears");
    assert!(heard.len() > 48_000, "audio keeps coming: {} samples", heard.len());
    tones
        .iter()
        .map(|&hz| {
            let mut shares: Vec<f64> = heard.chunks_exact(4800).map(|w| tone_share(w, hz)).collect();
            shares.sort_by(f64::total_cmp);
            shares[shares.len() / 2]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parties_over_wss_with_the_test_ca_hear_each_other_and_not_themselves() {
    let pki = make_pki("join");
    let core = start_tls_core(&pki).await;
    assert!(core.ws_url.starts_with("wss://127.0.0.1:") && core.ws_url.ends_with("/ws"), "{}", core.ws_url);
    assert!(core.http_url.starts_with("https://"), "{}", core.http_url);
    let options = trusting(&pki);
    let tones = [440.0, 660.0];
    let mut a = join(&core.ws_url, &options, "a", tones[0]).await;
    let mut b = join(&core.ws_url, &options, "b", tones[1]).await;
    assert!(a.transcript().render(callme::Render::Full).contains("wss://127.0.0.1:"), "the transcript names the wss URL");
    let (sa, sb) = tokio::join!(hear(&mut a, &tones), hear(&mut b, &tones));
    assert!(sa[1] > 0.5 && sa[0] < 0.02, "a hears b's 660 Hz and not its own 440 Hz: {sa:?}");
    assert!(sb[0] > 0.5 && sb[1] < 0.02, "b hears a's 440 Hz and not its own 660 Hz: {sb:?}");
    a.leave().await;
    b.leave().await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_does_not_trust_the_ca_fails_at_open_naming_the_certificate() {
    let pki = make_pki("untrusted");
    let core = start_tls_core(&pki).await;
    // Trusting only another CA: the core's certificate has an unknown issuer. (The system's
    // roots are left out so the test does not depend on what the machine has installed.)
    let other = make_pki("other");
    let err = match Session::connect_with_options(&core.ws_url, &trusting(&other)).await {
        Ok(_) => panic!("a certificate from an untrusted CA was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.stage, Stage::Open);
    let text = err.to_string();
    assert!(text.contains("invalid peer certificate") && text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("TlsOptions::add_root_pem"), "the error says how to trust the core: {text}");

    // With the system's roots only (the default), the test CA is unknown too.
    let err = match Session::connect(&core.ws_url).await {
        Ok(_) => panic!("the system roots vouched for the test CA"),
        Err(e) => e,
    };
    assert_eq!(err.stage, Stage::Open);
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(core.stats().sessions, 0, "no session was opened");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_with_tls_serves_nothing_in_the_clear() {
    let pki = make_pki("clear");
    let core = start_tls_core(&pki).await;
    let plain = core.ws_url.replacen("wss://", "ws://", 1);
    let options = ConnectOptions::default().with_timeouts(callme::Timeouts::default().with_open(Duration::from_secs(10)));
    let err = match Session::connect_with_options(&plain, &options).await {
        Ok(_) => panic!("a WebSocket in the clear was accepted by a TLS core"),
        Err(e) => e,
    };
    assert_eq!(err.stage, Stage::Open, "{err}");
    assert!(matches!(err.cause, callme::Cause::Transport { .. }), "the connection is refused, not timed out: {err}");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_page_is_served_over_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = make_pki("page");
    let core = start_tls_core(&pki).await;
    let mut roots = rustls::RootCertStore::empty();
    let ca: rustls::pki_types::CertificateDer = rustls::pki_types::pem::PemObject::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = core.http_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS to the page");
    tls.write_all(format!("GET /callme.js HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await.expect("the page arrives");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response:.200}");
    assert!(response.contains("CALLME_S2"), "the script of the page came: {:.200}", response);
    core.stop().await;
}
