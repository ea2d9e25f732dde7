//! The README's ten lines: join conference 7, hear the mix for two seconds, print the transcript.
//!
//! `cargo run --features core --example join [ws://HOST:PORT/ws]`

mod common;

use std::time::Duration;

use callme::{AudioSource, ClusterId, MediaReady, Session};

#[tokio::main]
async fn main() -> Result<(), callme::Error> {
    let target = common::Target::from_args().await?;
    let party = Session::connect(&target.url).await?.load(ClusterId(1), common::SCHEME, "bot").await?;
    let call = MediaReady::acquire(AudioSource::tone(440.0))
        .await?
        .call_me_s1(party)
        .await?
        .create_offer()
        .await?
        .call_me_s2()
        .await?
        .connect()
        .await?;
    let heard = call.listen(Duration::from_secs(2)).await?;
    println!("{}", call.transcript().render(callme::Render::Full));
    let peaks = callme::audio::dominant_frequencies(&heard, 3);
    println!("heard {} ms; strongest frequencies: {peaks:?}", heard.len() / 48);
    call.leave().await;
    target.stop().await;
    Ok(())
}
