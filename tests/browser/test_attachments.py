"""Attachments in the web client (issue 15.6, DESIGN §7 "Uploads"): Alice attaches a PNG
with the attach button and drops a PDF onto the conversation; both upload (with a progress
bar while they go, over a throttled uplink), and one message carries them. Bob sees the image's
thumbnail, opens it in the lightbox at full size, and sees the PDF as a chip with its
name and size."""

from __future__ import annotations

import struct
import zlib

from tests.browser.ui import expect

WIDTH, HEIGHT = 64, 48
SLOW_UPLINK = 4_000  # bytes/s: the PNG (~6 KB) takes about 1.5 s


def png(width: int, height: int) -> bytes:
    """A real PNG (RGB, a gradient), so the server's image code has pixels to read."""
    rows = b"".join(b"\0" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 128)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")

DROP = """([name, bytes]) => {
    const file = new File([new Uint8Array(bytes)], name, { type: 'application/pdf' });
    const dt = new DataTransfer();
    dt.items.add(file);
    const zone = document.getElementById('conv-view');
    for (const type of ['dragenter', 'dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
}"""


def test_photo_and_pdf_reach_the_other_side(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.register()
    bob.register()
    alice.chat_with(bob)
    alice.send("Photos coming")
    bob.open_conv(alice.display_name)
    expect(bob.message("Photos coming")).to_be_visible()

    a = alice.page
    # a slow uplink (Chromium's network emulation) so the progress bar has time to show
    # (Chromium reports an XHR's upload progress as the body enters its network service,
    # before the throttle: the bar is seen, its part-way values are not)
    cdp = alice.context.new_cdp_session(a)
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": SLOW_UPLINK})
    a.locator("#attach-input").set_input_files(
        files=[{"name": "gradient.png", "mimeType": "image/png", "buffer": png(WIDTH, HEIGHT)}])
    a.evaluate(DROP, ["notes.pdf", list(PDF)])
    items = a.locator("#attach-tray .attach-item")
    expect(items).to_have_count(2)
    bar = items.filter(has_text="gradient.png").locator("progress")
    expect(bar).to_be_visible()
    alice.shot("uploading")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    for item in (items.nth(0), items.nth(1)):
        expect(item).to_have_attribute("data-state", "done")
    expect(items.filter(has_text="gradient.png").locator("img.attach-preview")).to_be_visible()
    alice.shot("attachments-uploaded")
    alice.send("Here they are")
    expect(a.locator("#attach-tray")).to_be_hidden()

    msg = bob.message("Here they are")
    thumb = msg.locator(".attachment.thumb img")
    expect(thumb).to_be_visible()
    bob.page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=thumb.element_handle())
    chip = msg.locator(".attachment.file-chip")
    expect(chip.locator(".file-name")).to_have_text("notes.pdf")
    expect(chip.locator(".file-size")).to_have_text(f"{len(PDF)} B")
    people.shoot("attachments-received")

    msg.locator(".attachment.thumb").click()
    box = bob.page.locator("#lightbox")
    expect(box).to_be_visible()
    expect(box.locator("#lightbox-name")).to_have_text("gradient.png")
    full = box.locator("#lightbox-img")
    bob.page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=full.element_handle())
    assert full.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [WIDTH, HEIGHT]
    bob.shot("lightbox")
    box.locator("#lightbox-close").click()
    expect(box).to_be_hidden()
