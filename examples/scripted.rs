//! The whole sequence against the scripted core in memory (no network; the media layer is the
//! in-memory fake whose far side is a 660 Hz tone), printing the transcript, checked against
//! the seed's table.
//!
//! `cargo run --example scripted`

use std::time::Duration;

use callme::media::fake::FakeMedia;
use callme::testing::ScriptedCore;
use callme::{AudioSource, ClusterId, MediaReady, Render, SchemeId, Session, Timeouts};

#[tokio::main]
async fn main() -> Result<(), callme::Error> {
    let core = ScriptedCore::new();
    let session = Session::over(core.transport(), Timeouts::default()).with_host("127.0.0.1");
    let transcript = session.transcript();
    let party = session.load(ClusterId(1), SchemeId(7), "scripted").await?;
    let (media, _probe) = FakeMedia::new();
    let call = MediaReady::acquire_with(media.hearing(660.0), AudioSource::tone(440.0), &transcript)
        .await?
        .call_me_s1(party)
        .await?
        .create_offer()
        .await?
        .call_me_s2()
        .await?
        .connect()
        .await?;
    let heard = call.listen(Duration::from_millis(500)).await?;
    call.leave().await;
    print!("{}", transcript.render(Render::Redacted));
    println!("\nheard {} ms, 660 Hz share {:.2}", heard.len() / 48, callme::audio::tone_share(&heard, 660.0));
    println!("checked against the 19-step table: {:?}", callme::spec::check(&transcript.entries()));
    Ok(())
}
