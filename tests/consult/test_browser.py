"""The consult in real headless Chromium (Debian's, driven by Playwright, fake camera and
microphone): a village doctor asks from the request form, a specialist takes it from his
queue, both join the call from their pages and each decodes the other's video and hears
the other's sound; a township doctor invited late sees a picture at once (the hub relays
his keyframe request to the senders); leaving is seen; the opinion lands in the record.
Once with one server, once with two workers behind Redis where the village doctor's
browser and the specialists' talk to different processes."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import pytest

from tests.auth.conftest import VILLAGE_A
from tests.consult.network import CARDIOLOGY, MAX_FILE_BYTES, ConsultNetwork, make_network
from tests.consult.test_call_records import png_image
from tests.receivers import Receiver

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
DEADLINE = 90.0
DEMO_PASSWORD = "yinchuan-demo"
#: The password ``tests.consult.network`` gives the users it adds (hostile, outsider...).
OUTSIDER_PASSWORD = "consult-password-1"


@pytest.fixture(scope="module")
def browser_network(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    consult_receiver: Receiver,
) -> Iterator[ConsultNetwork]:
    network = make_network(request, tmp_path_factory, "sqlite", consult_receiver)
    try:
        yield network
    finally:
        network.system.close()
        network.server.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    async with playwright_api.async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        await instance.close()


@dataclass
class Setup:
    """The network, and which server each person's browser talks to."""

    net: ConsultNetwork
    servers: dict[str, str]


@pytest.fixture(params=["one server", "two workers behind Redis"])
def setup(request: pytest.FixtureRequest) -> Setup:
    if request.param == "one server":
        net = request.getfixturevalue("browser_network")
        return Setup(net, {name: net.server.url for name in PEOPLE})
    net, second = request.getfixturevalue("two_workers")
    # The village doctor's browser talks to one worker, the specialists' to the other: her
    # signalling and theirs land on different processes, which share one room over Redis.
    return Setup(
        net,
        {"village-doctor": net.server.url, "specialist": second.url, "township-doctor": second.url},
    )


PEOPLE = ("village-doctor", "specialist", "township-doctor")


async def signed_in(
    browser: Any, setup: Setup, username: str, password: str = DEMO_PASSWORD
) -> Any:
    """A page of a browser of the user's own (its own cookies), logged in."""
    base = setup.servers[username]
    context = await browser.new_context(locale="zh-CN", base_url=base)
    await context.grant_permissions(["camera", "microphone"], origin=base)
    page = await context.new_page()
    await page.goto("/login?next=/consult")
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/consult")
    return page


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, within: float = DEADLINE
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not so after {within:.0f} s")
        await asyncio.sleep(0.2)


async def remote(page: Any) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("() => window.consultCall.remoteStats()")
    return stats


async def decodes(page: Any, other: str, frames: int = 20) -> bool:
    return int((await remote(page)).get(other, {}).get("framesDecoded", 0)) >= frames


async def hears(page: Any, other: str) -> bool:
    """Whether the other's sound is arriving: its audio energy goes on rising."""
    before = float((await remote(page)).get(other, {}).get("totalAudioEnergy", 0))
    await asyncio.sleep(0.5)
    after = float((await remote(page)).get(other, {}).get("totalAudioEnergy", 0))
    return after > before > 0


async def sent(page: Any) -> dict[str, int]:
    stats: dict[str, int] = await page.evaluate("() => window.consultCall.sentStats()")
    return stats


async def join_call(page: Any, consult: str) -> None:
    await page.goto(f"/consult/{consult}/call")
    join = page.locator("#join")
    await join.wait_for()
    await eventually(join.is_enabled, "the camera and microphone check")
    await join.click()


async def test_request_queue_accept_call_late_joiner_leave_and_opinion(
    browser: Any, setup: Setup
) -> None:
    net = setup.net
    patient = await asyncio.to_thread(net.fresh_patient, VILLAGE_A)
    village = await signed_in(browser, setup, "village-doctor")
    specialist = await signed_in(browser, setup, "specialist")
    township = await signed_in(browser, setup, "township-doctor")

    # The village doctor asks, from the patient's chart link.
    await village.goto(f"/consult/new?patient={patient}")
    await village.select_option("#target", f"department:{net.departments[CARDIOLOGY]}")
    await village.check("input[name=priority][value=urgent]")
    await village.fill("#reason", "反复胸闷一周，心电图ST段压低")
    record = next(r for r in net.patients.values() if r.id == patient)
    await village.check(f"input[name=supporting][value='Observation/{record.observation}']")
    await village.check("input[name=agreed]")
    await village.click("button[type=submit].primary")
    await village.wait_for_url(f"{setup.servers['village-doctor']}/consult/*")
    consult = village.url.rsplit("/", 1)[1]
    assert await village.text_content("#state") == "等待专家接受"

    # The specialist finds it in his queue and takes it; her page follows by itself.
    await specialist.goto("/consult/queue")
    await specialist.click(f"#waiting a[href='/consult/{consult}']")
    await specialist.click("#accept")
    await specialist.wait_for_url(f"{setup.servers['specialist']}/consult/{consult}")
    assert await specialist.text_content("#state") == "已接受"
    await eventually(
        lambda: _text_is(village, "#state", "已接受"), "the village doctor's page updating"
    )
    # He reviews the shared record; what she pointed to comes first, marked.
    await specialist.goto(f"/consult/{consult}/record")
    pointed = specialist.locator(f"li.attached[data-reference='Observation/{record.observation}']")
    assert "150 mmHg" in (await pointed.text_content() or "")

    # Both join the call; each decodes the other's video and hears the other.
    await join_call(village, consult)
    await join_call(specialist, consult)
    await eventually(lambda: decodes(village, "specialist"), "village decodes specialist")
    await eventually(lambda: decodes(specialist, "village-doctor"), "specialist decodes village")
    await eventually(lambda: hears(village, "specialist"), "village hears specialist")
    await eventually(lambda: hears(specialist, "village-doctor"), "specialist hears village")
    await eventually(
        lambda: _text_is_not(village, "#quality", ""), "the connection-quality indicator"
    )

    # The township doctor, invited, joins late: the hub asks the senders for a keyframe, so
    # his first picture does not wait for a periodic one.
    invited = await asyncio.to_thread(
        net.act,
        "village-doctor",
        consult,
        "invite",
        practitioner=net.practitioner("township-doctor"),
    )
    assert invited.status_code == 200, invited.text
    before = {"village": await sent(village), "specialist": await sent(specialist)}
    await join_call(township, consult)
    await eventually(lambda: decodes(township, "village-doctor", 5), "late joiner sees village")
    await eventually(lambda: decodes(township, "specialist", 5), "late joiner sees specialist")
    after = {"village": await sent(village), "specialist": await sent(specialist)}
    for who in ("village", "specialist"):
        assert after[who]["pliCount"] > before[who]["pliCount"], who
        assert after[who]["keyFramesEncoded"] > before[who]["keyFramesEncoded"], who

    # He leaves; the others see him go.
    await township.click("#leave")
    for page in (village, specialist):
        await eventually(
            lambda p=page: _without(p, "township-doctor"), "the others seeing him leave"
        )
    assert await village.locator("figure[data-participant='township-doctor']").count() == 0

    # The specialist writes his opinion; it is in the record the village doctor keeps.
    await specialist.goto(f"/consult/{consult}/report")
    await specialist.fill("#conclusion", "考虑不稳定型心绞痛")
    await specialist.fill("#recommendations", "阿司匹林100mg每日一次，尽快转诊行冠脉造影")
    await specialist.click("button[type=submit].primary")
    await specialist.wait_for_url(f"{setup.servers['specialist']}/consult/{consult}")
    assert await specialist.text_content("#state") == "已完成"
    await village.goto(f"/consult/{consult}")
    assert "考虑不稳定型心绞痛" in (await village.text_content("#report") or "")
    for page in (village, specialist, township):
        await page.context.close()


async def _text_is(page: Any, selector: str, text: str) -> bool:
    try:
        return bool(await page.text_content(selector, timeout=2000) == text)
    except playwright_api.Error:
        return False  # the page is reloading


async def _text_is_not(page: Any, selector: str, text: str) -> bool:
    return bool((await page.text_content(selector) or "") != text)


async def _without(page: Any, participant: str) -> bool:
    present: list[str] = await page.evaluate("() => window.consultCall.participants()")
    return participant not in present


async def test_consent_recording_audio_only_and_reconnecting_as_the_pages_show_them(
    browser: Any, browser_network: ConsultNetwork
) -> None:
    """What issue 7 adds to the call, as the two doctors see it on their pages: the
    patient's consent to recording recorded from the consult page, the recording shown to
    both while it runs, a switch to audio only noticed by the other side, and a dropped
    line that comes back into the same call."""
    net = browser_network
    setup = Setup(net, {name: net.server.url for name in PEOPLE})
    patient = await asyncio.to_thread(net.fresh_patient, VILLAGE_A)
    consult = (await asyncio.to_thread(net.request_consult, patient))["id"]
    accepted = await asyncio.to_thread(net.act, "specialist", consult, "accept")
    assert accepted.status_code == 200, accepted.text
    village = await signed_in(browser, setup, "village-doctor")
    specialist = await signed_in(browser, setup, "specialist")

    # Without the patient's consent the call cannot be recorded, and both pages say so.
    await village.goto(f"/consult/{consult}")
    assert await village.get_attribute("#recording-consent", "data-consent") == "no"
    await village.click("#record-recording-consent")
    await village.wait_for_url(f"{net.server.url}/consult/{consult}")
    assert await village.get_attribute("#recording-consent", "data-consent") == "yes"

    await join_call(village, consult)
    await join_call(specialist, consult)
    await eventually(lambda: decodes(village, "specialist"), "village decodes specialist")
    await eventually(lambda: decodes(specialist, "village-doctor"), "specialist decodes village")
    for page in (village, specialist):
        assert await page.get_attribute("#recording-consent", "data-consent") == "yes"
        assert await page.locator("#record").is_enabled()

    # She records; both pages show it while it runs; he stops it.
    await village.click("#record")
    for page in (village, specialist):
        await eventually(lambda p=page: _recording(p), "the recording shown")
        assert await page.locator("#recording").is_visible()
    document = await village.evaluate("() => window.consultCall.recording()")
    assert str(document).startswith("DocumentReference/")
    await specialist.click("#record")
    for page in (village, specialist):
        await eventually(lambda p=page: _not_recording(p), "the recording's end shown")

    # Her clinic withdraws the patient's consent during the call: both pages follow at once.
    withdrawn = await asyncio.to_thread(
        net.act, "village-doctor", consult, "recording-consent", agreed=False
    )
    assert withdrawn.status_code == 200, withdrawn.text
    for page in (village, specialist):
        await eventually(
            lambda p=page: _consent_shown(p, "no"), "the withdrawn consent on the page"
        )
        assert await page.text_content("#recording-consent") == "无患者录像同意"
        assert await page.locator("#record").is_disabled()

    # He switches to audio only: his page stops sending video, hers says so; and back.
    await specialist.click("#media-mode")
    await eventually(lambda: _mode(specialist, "audio-only"), "his page in audio only")
    await eventually(lambda: _notice_has(village, "仅语音"), "her notice of his audio only")
    await specialist.click("#media-mode")
    await eventually(lambda: _mode(specialist, "video"), "his page with video again")
    await eventually(lambda: _notice_has(village, "视频已恢复"), "her notice of his video")

    # Her line drops: he sees her reconnecting, then back, and her video comes again.
    await village.evaluate("() => window.consultCall.dropSignalling()")
    await eventually(
        lambda: _text_has(specialist, "#call-status", "连接已断开"), "him seeing her reconnecting"
    )
    await eventually(
        lambda: _text_has(specialist, "#call-status", "已重新连接"), "him seeing her back"
    )
    seen = int((await remote(specialist)).get("village-doctor", {}).get("framesDecoded", 0))
    await eventually(
        lambda: decodes(specialist, "village-doctor", seen + 20), "her video after reconnecting"
    )
    assert not await village.evaluate("() => window.consultCall.reconnecting()")

    # The recording is in the record, finished, for the specialist.
    with net.as_user("specialist") as fhir:
        kept = (await asyncio.to_thread(fhir.get, f"/{document}")).json()
    assert kept["docStatus"] == "final"
    for page in (village, specialist):
        await page.context.close()


async def _consent_shown(page: Any, shown: str) -> bool:
    return bool(await page.get_attribute("#recording-consent", "data-consent") == shown)


async def _recording(page: Any) -> bool:
    return bool(await page.evaluate("() => window.consultCall.recording()"))


async def _not_recording(page: Any) -> bool:
    return not await _recording(page)


async def _mode(page: Any, mode: str) -> bool:
    return bool(await page.evaluate("() => window.consultCall.mode()") == mode)


async def _notice_has(page: Any, text: str) -> bool:
    return text in str(await page.evaluate("() => window.consultCall.notice()"))


async def _text_has(page: Any, selector: str, text: str) -> bool:
    return text in (await page.text_content(selector) or "")


async def test_readings_chat_and_an_image_from_the_village_page_reach_the_specialist(
    browser: Any, browser_network: ConsultNetwork
) -> None:
    """The call's data channel as the two doctors use it: she enters a blood pressure on
    her page, he sees it on his and it is an Observation in the patient's record; an
    impossible one is refused beside her form, naming the field; a chat line and a photo
    she shares reach him; an outsider's page cannot join the call."""
    net = browser_network
    setup = Setup(net, {name: net.server.url for name in (*PEOPLE, "outsider")})
    patient = await asyncio.to_thread(net.fresh_patient, VILLAGE_A)
    consult = (await asyncio.to_thread(net.request_consult, patient))["id"]
    accepted = await asyncio.to_thread(net.act, "specialist", consult, "accept")
    assert accepted.status_code == 200, accepted.text
    village = await signed_in(browser, setup, "village-doctor")
    specialist = await signed_in(browser, setup, "specialist")
    await join_call(village, consult)
    await join_call(specialist, consult)

    # She measures a blood pressure and sends it; his page shows it, from her.
    await village.select_option("#reading-kind", "blood-pressure")
    await village.fill("#reading-blood-pressure-systolic", "158")
    await village.fill("#reading-blood-pressure-diastolic", "96")
    await village.click("#send-reading")
    seen = specialist.locator(
        "#readings li[data-kind='blood-pressure'][data-from='village-doctor']"
    )
    await seen.wait_for(timeout=DEADLINE * 1000)
    assert "158/96 mmHg" in (await seen.text_content() or "")
    await eventually(lambda: _text_is(village, "#reading-status", "已存入健康档案"), "her reply")
    observation = await seen.get_attribute("data-observation")
    assert str(observation).startswith("Observation/")
    with net.as_user("specialist") as fhir:
        kept = (await asyncio.to_thread(fhir.get, f"/{observation}")).json()
    assert kept["subject"]["reference"] == f"Patient/{patient}"
    components = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in kept["component"]}
    assert (components["8480-6"]["value"], components["8462-4"]["value"]) == (158, 96)

    # A temperature in ℉ is kept in ℃, as the visit form keeps it.
    await village.select_option("#reading-kind", "temperature")
    await village.select_option("fieldset[data-kind=temperature] select[data-unit]", "[degF]")
    await village.fill("#reading-temperature-value", "100.4")
    await village.click("#send-reading")
    fever = specialist.locator("#readings li[data-kind='temperature']")
    await fever.wait_for(timeout=DEADLINE * 1000)
    assert "体温 38.0 ℃" in (await fever.text_content() or "")

    # An impossible one is refused beside her form, naming the field; he never sees it.
    await village.select_option("#reading-kind", "blood-pressure")
    await village.fill("#reading-blood-pressure-systolic", "400")
    await village.fill("#reading-blood-pressure-diastolic", "90")
    await village.click("#send-reading")
    error = village.locator("#reading-error")
    await error.wait_for(state="visible", timeout=DEADLINE * 1000)
    assert "收缩压" in (await error.text_content() or "")
    systolic = village.locator("#reading-blood-pressure-systolic")
    assert await systolic.get_attribute("aria-invalid") == "true"

    # A chat line, and a photo of the lesion: both reach him, the photo from the record.
    await village.fill("#chat-text", "请看皮损照片")
    await village.click("#send-chat")
    line = specialist.locator("#chat-log li[data-from='village-doctor']")
    await line.wait_for(timeout=DEADLINE * 1000)
    assert "请看皮损照片" in (await line.text_content() or "")
    await village.set_input_files(
        "#share-file", {"name": "lesion.png", "mimeType": "image/png", "buffer": png_image()}
    )
    await village.click("#share")
    photo = specialist.locator("#shared li[data-from='village-doctor'] img")
    await photo.wait_for(timeout=DEADLINE * 1000)
    await eventually(
        lambda: _image_decoded(photo, 64), "the shared photo shown on the specialist's page"
    )
    assert await specialist.locator("#readings li").count() == 2

    # Her media connection fails while a large ECG photo is going out: the photo is sent
    # again, whole, on the new connection, and reaches him once.
    ecg = noisy_png(280, 280)
    assert 200_000 < len(ecg) <= MAX_FILE_BYTES
    await village.set_input_files(
        "#share-file", {"name": "ecg.png", "mimeType": "image/png", "buffer": ecg}
    )
    await village.evaluate(CUT_WHILE_SENDING)
    await eventually(lambda: _text_is(village, "#file-status", "已存入健康档案"), "her reply")
    assert await village.evaluate("() => window.consultCall.resent()") == 1
    big = specialist.locator("#shared li[data-from='village-doctor'] img[alt='ecg.png']")
    await big.wait_for(timeout=DEADLINE * 1000)
    await eventually(lambda: _image_decoded(big, 280), "the ECG photo shown whole")
    assert await specialist.locator("#shared li[data-from='village-doctor']").count() == 2
    with net.as_user("specialist") as fhir:
        shared = (
            await asyncio.to_thread(
                fhir.get, "/DocumentReference", params={"patient": f"Patient/{patient}"}
            )
        ).json()
    titles = [
        content["attachment"].get("title")
        for entry in shared.get("entry", [])
        for content in entry["resource"]["content"]
    ]
    assert titles.count("ecg.png") == 1, titles

    # Someone from another clinic gets no call page, and so no data channel.
    outsider = await signed_in(browser, setup, "outsider", OUTSIDER_PASSWORD)
    response = await outsider.goto(f"/consult/{consult}/call")
    assert response is not None and response.status == 403
    assert await outsider.locator("#join").count() == 0
    for page in (village, specialist, outsider):
        await page.context.close()


#: Shares the chosen file and, once its first part is on the way, fails the media
#: connection the way a dropped link does (the page negotiates a new one).
CUT_WHILE_SENDING = """() => new Promise((resolve) => {
  document.getElementById("share").click();
  const wait = () => {
    if (window.consultCall.waiting() > 0) {
      window.consultCall.renegotiate();
      resolve(true);
    } else {
      setTimeout(wait, 0);
    }
  };
  wait();
})"""


def noisy_png(width: int, height: int) -> bytes:
    """A PNG of noise: it does not compress, so it is about width × height × 3 bytes."""
    frame = av.VideoFrame(width, height, "rgb24")
    frame.planes[0].update(os.urandom(frame.planes[0].buffer_size))
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    return b"".join(bytes(p) for p in codec.encode(frame))


async def _image_decoded(image: Any, width: int) -> bool:
    return bool(await image.evaluate("(img) => img.complete && img.naturalWidth") == width)
