"""The listening page each generation run writes beside its pieces: well-formed, offline, and
tested in a real browser (headless Chromium through Selenium, skipped with the reason where
no browser or driver is installed)."""

import json
import os
import shutil
import struct
import xml.etree.ElementTree as ET

import pytest

from conftest import melody, run_cli, write_int16

XHTML = "{http://www.w3.org/1999/xhtml}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny training run writing 2 pieces into out/, and a second generation run beside it."""
    root = tmp_path_factory.mktemp("page")
    music, out = root / "music", root / "out"
    music.mkdir()
    out.mkdir()
    for index in range(2):
        write_int16(music / f"{index}.wav", melody(8.0, seed=40 + index))
    flags = ["-d", music, "-t", root / "train", "-n", "8", "-l", "1", "-g", "2", "-s", "3",
             "--random-seed", "1"]
    first = run_cli(*flags, "-e", "1", "-o", out / "piece", cwd=root)
    assert first.returncode == 0, first.stderr
    second = run_cli(*flags, "-e", "0", "-g", "1", "-o", out / "piece", cwd=root)
    assert second.returncode == 0, second.stderr
    return root, out, first, second


def test_every_run_writes_its_own_page_and_says_where(run):
    _, out, first, second = run
    assert f"Listen: {out / 'piece.html'}" in first.stdout
    assert f"Listen: {out / 'piece-run-2.html'}" in second.stdout  # the first page is kept
    # The excerpts of the training music are named so that the pieces' pattern finds none.
    assert (out / "piece.music-excerpt.wav").exists()
    assert (out / "piece.music-excerpt-2.wav").exists()
    assert sorted(path.name for path in out.glob("piece-*.wav")) == [
        "piece-0.wav", "piece-1.wav", "piece-2.wav"]
    second_page = ET.fromstring((out / "piece-run-2.html").read_bytes())
    assert "piece-2.wav" in (out / "piece-run-2.html").read_text()
    assert second_page.find(f".//{XHTML}h1").text == "1 piece by music-composer"


def test_the_page_is_well_formed_and_offline(run):
    _, out, _, _ = run
    text = (out / "piece.html").read_text()
    root = ET.fromstring(text.encode())  # well-formed XML, or this raises
    assert "http:" not in text.replace("http://www.w3.org/1999/xhtml", "")
    assert "https:" not in text and "<script" not in text
    sources = [element.get("src") for element in root.iter()
               if element.tag in (f"{XHTML}audio", f"{XHTML}img")]
    assert len(sources) == 2 * 2 + 2  # a player and a picture per piece, the excerpt, the loss
    for source in sources:
        if not source.startswith("data:image/png;base64,"):
            assert "/" not in source and (out / source).is_file(), source  # beside the page


def png_size(path):
    with open(path, "rb") as handle:
        return struct.unpack(">II", handle.read(24)[16:24])


def chromium():
    """A headless Chromium driven by Selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no Chromium or chromedriver installed (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # its requests
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
                     "--allow-file-access-from-files"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def test_the_page_in_a_real_browser(run, mc):
    """Every player loads its file and reports the piece's length, every picture loads at its
    size, nothing is requested from outside the folder, and the figures are the reports'."""
    _, out, _, _ = run
    browser = chromium()
    try:
        browser.get((out / "piece.html").as_uri())
        browser.set_script_timeout(30)
        durations = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const players = [...document.querySelectorAll('audio')];
            Promise.all(players.map(a => a.readyState >= 1 ? null : new Promise((ok, fail) => {
                a.addEventListener('loadedmetadata', ok); a.addEventListener('error', fail);
                a.load(); }))).then(() => done(players.map(a => [a.getAttribute('src'),
                a.duration])), e => done('error ' + e));""")
        assert len(durations) == 3, durations
        for source, duration in durations:
            seconds = os.path.getsize(out / source) - 44  # 16-bit mono PCM after the header
            assert duration == pytest.approx(seconds / 2 / 44_100, abs=0.01), source
        assert {source for source, _ in durations} >= {"piece-0.wav", "piece-1.wav"}
        pictures = browser.execute_script("""return [...document.images].map(i =>
            [i.getAttribute('src').slice(0, 40), i.complete, i.naturalWidth, i.naturalHeight]);""")
        assert len(pictures) == 3
        for source, complete, width, height in pictures:
            assert complete and width > 0 and height > 0, source
            if not source.startswith("data:"):
                assert (width, height) == png_size(out / source)
        messages = [json.loads(entry["message"])["message"]
                    for entry in browser.get_log("performance")]
        requests = [message["params"]["request"]["url"] for message in messages
                    if message["method"] == "Network.requestWillBeSent"]
        files = [url for url in requests if not url.startswith("data:")]  # (data: is inline:
        # the loss curve, and the browser's own icons for its players)
        assert len(files) >= 6, requests  # the page, 3 players, 2 pictures
        outside = [url for url in files if not url.startswith(out.as_uri() + "/")]
        assert not outside, outside
        title = browser.find_element("tag name", "h1").text
        first_rows = browser.execute_script("""return [...document.querySelectorAll(
            'table.summary tr')].slice(0, 3).map(r => r.cells[0].textContent);""")
        shown = browser.execute_script("""return [...document.querySelectorAll(
            'table.summary tr[data-piece]')].map(r => [r.dataset.piece, Object.fromEntries(
            [...r.querySelectorAll('td[data-key]')].map(td => [td.dataset.key,
            [td.textContent, td.classList.contains('far')]]))]);""")
        sections = browser.execute_script(
            "return [...document.querySelectorAll('section')].map(s => s.id);")
    finally:
        browser.quit()
    # One summary table first: the music's row on top, then a row per piece with every figure
    # of its report, a star on exactly the cells shaded as far; then each piece's section.
    assert title == "2 pieces by music-composer"
    assert first_rows == ["piece", "the music", "piece-0.wav"]  # the header, then
    assert sections == ["piece-0", "piece-1"]
    specs = {key: (spec, unit) for key, _, _, spec, unit, _, _ in mc.PAGE_FIGURES}
    assert [name for name, _ in shown] == ["piece-0", "piece-1"]
    for name, figures in shown:
        report = json.loads((out / f"{name}.json").read_text())
        assert len(figures) >= 10
        for key, (text, far) in figures.items():
            assert text == mc.shown_figure(report[key], *specs[key]) + ("*" if far else ""), \
                (name, key)
