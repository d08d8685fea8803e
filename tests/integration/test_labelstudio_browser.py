"""The Label Studio frontend in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against the test Label Studio and ``pasam serve``.

A user logs in and opens a task that has a stored PA-SAM prediction: the brush region is
drawn where the mask is (screenshot pixels over the image, inside against outside the mask).
Then the smart keypoint, as Label Studio 1.23 offers it (Auto-Annotation on, the
"Auto-Detect" toolbar button, the keypoint's label), one click on the image: the backend
gets the interactive request and Label Studio shows the suggestion. Last, a project of six
EM sections in the Data Manager with the "Prediction score" column, ordered by it (the
least certain task first): its screenshot is the one in the README. Screenshots of a failing test are saved to
``$PASAM_SCREENSHOT_DIR`` (default ``test-artifacts/`` in the repository).

Run: ``pytest -m integration tests/integration/test_labelstudio_browser.py``.
"""

import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from lsrun import PASSWORD, ROOT, USER, decode, metrics, served_version
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

SCREENSHOTS = Path(os.environ.get("PASAM_SCREENSHOT_DIR", ROOT / "test-artifacts"))
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--force-device-scale-factor=1",
)


def find_binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"{' / '.join(names)} not found: install Debian's chromium and chromium-driver "
        "(scripts/install_browser_deps.sh)"
    )


@pytest.fixture(scope="module")
def driver(label_studio):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = find_binary("chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="pasam-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(find_binary("chromedriver")), options=options)
    browser.set_page_load_timeout(300)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(driver, request):
    """The browser; a screenshot (and the page's HTML) is saved when the test fails."""
    yield driver
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        stem = SCREENSHOTS / f"{request.node.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        driver.save_screenshot(str(stem.with_suffix(".png")))
        stem.with_suffix(".html").write_text(driver.page_source)


def wait_for(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as e:  # noqa: BLE001 - the page is still changing
            value = e
        if value and not isinstance(value, Exception):
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")


def visible(driver, css: str):
    """The displayed elements matching ``css`` (elements the page replaces meanwhile are
    left out)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    out = []
    for e in driver.find_elements(By.CSS_SELECTOR, css):
        try:
            if e.is_displayed():
                out.append(e)
        except StaleElementReferenceException:
            pass
    return out


def button(driver, text: str):
    return wait_for(
        f"the {text!r} button",
        lambda: [b for b in visible(driver, "button") if b.text.strip() == text],
    )[0]


def screenshot(driver) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(
        int
    )


def login(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/user/login/")
    wait_for("the login form", lambda: visible(driver, "input[name=email]"))
    driver.find_element(By.NAME, "email").send_keys(USER)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait_for("logged in", lambda: "/user/login" not in driver.current_url)


@pytest.fixture(scope="module")
def predicted(ls, backend, image_root):
    """A project with one EM section whose task holds a detector's box and the PA-SAM
    prediction "Retrieve predictions" made from it: (project id, task, PA-SAM prediction)."""
    pid, ml, (task,) = ls.new_project("PA-SAM in the browser", image_root / "browser", backend[0])
    version = served_version(backend[0])
    ls.wait_until(
        "the project scores the served version",
        lambda: ls.call("GET", f"/api/projects/{pid}")["model_version"] == version,
    )
    box = {
        "id": "det-1",
        "from_name": "tag3",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 512,
        "original_height": 512,
        "image_rotation": 0,
        "value": {
            "x": 35,
            "y": 30,
            "width": 30,
            "height": 30,
            "rotation": 0,
            "rectanglelabels": ["Cell"],
        },
    }
    ls.call(
        "POST",
        "/api/predictions",
        json={"task": task["id"], "result": [box], "model_version": "detector-v1", "score": 0.5},
    )
    ls.call(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=600,
    )
    preds = [
        p
        for p in ls.call("GET", f"/api/predictions?project={pid}")
        if p["model_version"] == version
    ]
    assert len(preds) == 1, preds
    assert preds[0]["result"], "the PA-SAM prediction holds no mask"
    return pid, task, preds[0]


@pytest.fixture(scope="module")
def scored(ls, backend, image_root):
    """A project of six EM sections, each with a detector's two boxes turned into PA-SAM
    masks by "Retrieve predictions": (project id, {task id: prediction score})."""
    pid, ml, tasks = ls.new_project("PA-SAM: least certain first", image_root / "dm", backend[0])
    assert len(tasks) == 6
    version = served_version(backend[0])
    ls.wait_until(
        "the project scores the served version",
        lambda: ls.call("GET", f"/api/projects/{pid}")["model_version"] == version,
    )
    for i, task in enumerate(tasks):
        boxes = [(10 + 7 * i, 15, 25, 20), (50, 40 + 5 * i, 30, 30)]
        result = [
            {
                "id": f"det-{i}-{j}",
                "from_name": "tag3",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": 512,
                "original_height": 512,
                "image_rotation": 0,
                "value": {
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "rotation": 0,
                    "rectanglelabels": ["Cell"],
                },
            }
            for j, (x, y, w, h) in enumerate(boxes)
        ]
        ls.call(
            "POST",
            "/api/predictions",
            json={
                "task": task["id"],
                "result": result,
                "model_version": "detector-v1",
                "score": 0.5,
            },
        )
    ls.call(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=900,
    )
    scores = {
        p["task"]: p["score"]
        for p in ls.call("GET", f"/api/predictions?project={pid}")
        if p["model_version"] == version
    }
    assert set(scores) == {t["id"] for t in tasks}
    return pid, scores


def image_box(driver) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the task image on the page, in screenshot pixels."""
    r = driver.execute_script(
        "const r = document.querySelector('img[alt=\"image\"]').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height];"
    )
    return tuple(float(v) for v in r)


def tint(shot: np.ndarray, box, mask: np.ndarray) -> float:
    """Mean red-minus-blue of the screenshot over the mask's pixels (the EM image is gray,
    the brush label #FFA39E is drawn red over it)."""
    left, top, width, height = box
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    sy = np.clip((top + (ys + 0.5) * height / h).astype(int), 0, shot.shape[0] - 1)
    sx = np.clip((left + (xs + 0.5) * width / w).astype(int), 0, shot.shape[1] - 1)
    px = shot[sy, sx]
    return float((px[:, 0] - px[:, 2]).mean())


def test_a_stored_prediction_is_drawn_and_a_smart_click_gets_a_suggestion(
    page, label_studio, backend, predicted
):
    import cv2
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url = label_studio[0]
    pid, task, prediction = predicted
    login(page, url)
    page.get(f"{url}/projects/{pid}/data?task={task['id']}")
    wait_for("the task image", lambda: visible(page, 'img[alt="image"]'))
    # the prediction shows as the task's first draft: its brush region in the regions list
    wait_for(
        "the brush region in the regions panel",
        lambda: (
            "Cell"
            in page.find_element(By.CSS_SELECTOR, ".lsf-outliner, .lsf-sidepanels, body").text
        ),
    )
    time.sleep(3)  # the brush layer is drawn after the region list

    # the mask's pixels are red-tinted on the canvas, the pixels around it are not
    mask = np.zeros((512, 512), bool)
    for region in prediction["result"]:
        mask |= decode(region)
    inside = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert inside.sum() > 50 and outside.sum() > 50
    shot = screenshot(page)
    box = image_box(page)
    t_in, t_out = tint(shot, box, inside), tint(shot, box, outside)
    assert t_in > t_out + 20, (t_in, t_out)
    assert abs(t_out) < 8, t_out  # the gray image elsewhere

    # smart keypoint: Auto-Annotation on, Auto-Detect -> keypoint, the keypoint's label, click
    page.find_element(By.CSS_SELECTOR, '[data-testid="bottombar-auto-annotation-toggle"]').click()
    smart = wait_for("the Auto-Detect button", lambda: visible(page, "button.lsf-tool_smart"))[0]
    ActionChains(page).move_to_element(smart).perform()
    tools = wait_for("the Auto-Detect tools", lambda: visible(page, ".lsf-toolbar__smart button"))
    (keypoint_tool,) = [t for t in tools if t.get_attribute("aria-label") == "key-point-tool"]
    keypoint_tool.click()
    groups = page.find_elements(By.CSS_SELECTOR, ".lsf-labels")
    assert len(groups) == 3  # brush, keypoint and rectangle labels, in the config's order
    label = groups[1].find_element(By.CSS_SELECTOR, ".lsf-label")
    page.execute_script(
        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", label
    )
    wait_for(
        "the keypoint label selected", lambda: "lsf-label_selected" in label.get_attribute("class")
    )
    page.execute_script(
        "document.querySelector('img[alt=\"image\"]').scrollIntoView({block: 'center'});"
    )
    time.sleep(1)
    before = metrics(backend[0])["interactive_requests"]
    image = page.find_element(By.CSS_SELECTOR, 'img[alt="image"]')
    ActionChains(page).move_to_element_with_offset(image, -90, 60).click().perform()
    wait_for(
        "the interactive request", lambda: metrics(backend[0])["interactive_requests"] == before + 1
    )
    # Label Studio shows the mask as a suggestion to accept or reject
    wait_for(
        "the suggestion",
        lambda: re.search(r"\b1 suggestions?\b", page.find_element(By.TAG_NAME, "body").text),
    )


def test_data_manager_ordered_by_prediction_score(page, label_studio, ls, scored):
    """The Data Manager as the README tells a team to set it up: Columns -> Prediction score,
    Order by -> Prediction score: the tasks' PA-SAM scores, the least certain first. The
    screenshot is the README's."""
    from selenium.webdriver.common.by import By

    url = label_studio[0]
    pid, scores = scored
    if "/user/login" in page.current_url or page.current_url.startswith("data:"):
        login(page, url)
    page.get(f"{url}/projects/{pid}/data")
    columns = button(page, "Columns")
    columns.click()
    wait_for(
        "the column list",
        lambda: page.find_element(
            By.XPATH, "//label[.//span[normalize-space()='Prediction score']]"
        ),
    ).click()
    columns.click()
    button(page, "Order by").click()
    wait_for(
        "the Order by menu",
        lambda: [
            e
            for e in page.find_elements(By.XPATH, "//*[normalize-space(text())='Prediction score']")
            if e.is_displayed() and "lsf-th-content" not in (e.get_attribute("class") or "")
        ],
    )[0].click()
    ls.wait_until(
        "the view ordered by prediction score",
        lambda: [
            v
            for v in ls.call("GET", f"/api/dm/views?project={pid}")
            if (v["data"].get("ordering") or [None])[0] == "tasks:predictions_score"
        ],
    )

    # close the menu (a click on the status bar); the table reloads in the new order
    page.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), 'Tasks:')]").click()

    def shown_in_order() -> list[float]:
        rows = visible(page, '[data-testid="table-row"]')
        values = []
        for row in rows:
            found = re.findall(r"\b[01]\.\d+\b", row.text)
            if not found:
                raise ValueError(f"a row without a score: {row.text!r}")
            values.append(float(found[-1]))
        if len(values) != len(scores):
            raise ValueError(f"{len(values)} rows: {values}")
        if values != sorted(values):  # the least certain task first
            raise ValueError(f"not ordered by prediction score: {values}")
        return values

    values = wait_for("six rows ordered by prediction score", shown_in_order, timeout=60)
    assert values == pytest.approx(sorted(round(v, 3) for v in scores.values()), abs=1.5e-3)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOTS / "labelstudio_data_manager.png"))
