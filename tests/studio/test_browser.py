"""The labeling UI in a real headless Chromium: two labelers log in and vote (keys and clicks,
skip, undo), a tampered item id is refused, a gold item catches the careless labeler, and the
admin page shows agreement and the win rate with its interval."""

from __future__ import annotations

import os
import re
from pathlib import Path

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from kubetune_studio.store.schema import Labeler, Vote
from tests.studio.conftest import RunningStudio
from tests.studio.studio_support import ADMIN_EMAIL, ADMIN_PASSWORD, Api, admin_api, count
from tests.studio.studio_support import set_up_campaign as set_up

PROMPTS = 10
CAREFUL = ("ann@example.com", "ann-password")
CARELESS = ("bob@example.com", "bob-password")
THIRD = ("cat@example.com", "cat-password")


def campaign_rows() -> tuple[list[dict], list[dict]]:
    """tuned answers n + 1 (right), base n + 2; both gold items' right answer is B."""
    responses = []
    for n in range(PROMPTS):
        prompt = f"What is {n} + 1?"
        responses.append({"prompt": prompt, "model": "tuned", "response": str(n + 1)})
        responses.append({"prompt": prompt, "model": "base", "response": str(n + 2)})
    gold = [
        {"prompt": "What is 40 + 1?", "response_a": "14", "response_b": "41", "answer": "b"},
        {"prompt": "What is 70 + 1?", "response_a": "17", "response_b": "71", "answer": "b"},
    ]
    return responses, gold


def wait(driver, seconds: float = 60.0) -> WebDriverWait:
    return WebDriverWait(driver, seconds)


def log_in(driver, base: str, email: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "nav .who")))


def right_answer(driver) -> str:
    """The position holding the correct sum on the page shown."""
    question = driver.find_element(By.ID, "prompt").text
    correct = str(int(question.split("What is ")[1].split(" ")[0]) + 1)
    shown_a = driver.find_element(By.CSS_SELECTOR, "#response-a pre").text.strip()
    shown_b = driver.find_element(By.CSS_SELECTOR, "#response-b pre").text.strip()
    assert correct in (shown_a, shown_b), (question, shown_a, shown_b)
    return "a" if shown_a == correct else "b"


def current_item(driver) -> int:
    return int(driver.find_element(By.ID, "item-id").get_attribute("value"))


def type_key(driver, key: str) -> None:
    """A key pressed on the page itself (focus out of any text field)."""
    driver.execute_script("document.activeElement && document.activeElement.blur();")
    ActionChains(driver).send_keys(key).perform()


def mark_page(driver) -> None:
    """A mark on the current page's window; a newly loaded page has none."""
    driver.execute_script("window.kubetuneTestOldPage = true;")


def new_page_loaded(driver) -> bool:
    # While the browser navigates, a script may fail in several ways (Chromium reports a
    # detached document as an unknown error): the new page is simply not there yet.
    try:
        return driver.execute_script(
            "return window.kubetuneTestOldPage === undefined && document.readyState === 'complete';"
        )
    except WebDriverException:
        return False


def press(driver, key: str) -> None:
    """A key that submits a form, then the next page loaded."""
    mark_page(driver)
    type_key(driver, key)
    wait(driver).until(new_page_loaded)


def click(driver, element_id: str) -> None:
    mark_page(driver)
    driver.find_element(By.ID, element_id).click()
    wait(driver).until(new_page_loaded)


def label_all(driver, base: str, careful: bool) -> None:
    driver.get(f"{base}/campaigns/ui/label")
    while not driver.find_elements(By.ID, "done"):
        if careful:
            choice = right_answer(driver)
            driver.find_element(By.ID, "reasoning").send_keys("the sum is right")
            type_key(driver, "4")
            assert driver.find_element(By.ID, "confidence-4").is_selected()
            press(driver, choice)
        else:
            click(driver, "choose-a")  # always A, whatever is shown


def test_two_labelers_vote_in_the_browser_and_the_admin_sees_agreement_and_win_rate(
    studio: RunningStudio, browser, tmp_path: Path
) -> None:
    responses, gold = campaign_rows()
    admin = admin_api(studio.url)
    set_up(
        admin,
        "ui",
        responses,
        dict([CAREFUL, CARELESS, THIRD]),
        gold=gold,
        labels_per_item=3,
        gold_every=1,
        min_gold_votes=2,
        min_consensus_votes=3,
    )
    base = studio.url

    # The careful labeler: keyboard for confidence and choice; the vote reveals the models.
    log_in(browser, base, *CAREFUL)
    browser.get(f"{base}/campaigns/ui/label")
    progress = browser.find_element(By.ID, "progress").text
    assert "0 voted" in progress
    page = browser.page_source
    assert "tuned" not in page and "base" not in page, "model names shown before the vote"
    first = current_item(browser)
    choice = right_answer(browser)
    press(browser, choice)
    revealed = browser.find_element(By.ID, "revealed").text
    assert re.search(r"A was (tuned|base), B was (tuned|base)", revealed), revealed

    # Undo (key U) brings the same item back; skip (key S) moves on.
    press(browser, "u")
    assert current_item(browser) == first
    assert "undone" in browser.find_element(By.ID, "notice").text
    press(browser, "s")
    assert current_item(browser) != first

    # A tampered item id in the form is refused, and nothing is stored.
    with studio.db.sessions() as session:
        votes_before = count(session, Vote)
    browser.execute_script(f"document.getElementById('item-id').value = '{first}';")
    click(browser, "choose-b")
    assert "not the item you were given" in browser.find_element(By.ID, "error").text
    with studio.db.sessions() as session:
        assert count(session, Vote) == votes_before

    label_all(browser, base, careful=True)
    if os.environ.get("KUBETUNE_STUDIO_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["KUBETUNE_STUDIO_SCREENSHOTS"]) / "done.png"))

    # The careless labeler clicks A on everything, gold items included.
    log_in(browser, base, *CARELESS)
    label_all(browser, base, careful=False)

    # A third, careful labeler votes through the API, so agreement is defined without bob.
    third = Api(base, *THIRD)
    while (item := third.ok("GET", "/api/campaigns/ui/next")["item"]) is not None:
        number = int(item["prompt"][0]["content"].split()[2])
        right = "a" if item["response_a"] == str(number + 1) else "b"
        third.ok(
            "POST", "/api/campaigns/ui/votes", json={"item_id": item["item_id"], "choice": right}
        )

    with studio.db.sessions() as session:
        by_email = {
            email: n
            for email, n in session.execute(
                select(Labeler.email, Labeler.label_count).where(Labeler.label_count > 0)
            )
        }
    # Each labeler voted on every regular item (skipped ones excepted) and on the gold items.
    assert by_email[CARELESS[0]] == PROMPTS + 2
    assert by_email[THIRD[0]] == PROMPTS + 2

    log_in(browser, base, ADMIN_EMAIL, ADMIN_PASSWORD)
    click(browser, "admin-link")
    mark_page(browser)
    browser.find_element(By.LINK_TEXT, "ui").click()
    wait(browser).until(new_page_loaded)
    overview = browser.find_element(By.ID, "overview").text
    assert f"{PROMPTS} items (+2 gold)" in overview, overview
    assert f"{PROMPTS} of {PROMPTS} items at 3 labels" not in overview  # ann skipped one
    careless_row = browser.find_element(By.CSS_SELECTOR, f"tr[data-email='{CARELESS[0]}']")
    assert "excluded" in careless_row.get_attribute("class")
    status = careless_row.find_element(By.CLASS_NAME, "status").text
    assert "gold agreement 0.00 (95% CI up to 0.66) < 0.70 on 2 gold items" in status, status
    for email in (CAREFUL[0], THIRD[0]):
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-email='{email}']")
        assert "included" in row.get_attribute("class")

    alpha = browser.find_element(By.CSS_SELECTOR, "#agreement .alpha").text
    report = admin.ok("GET", "/api/campaigns/ui/report")
    assert float(alpha) > 0.9, report  # ann and cat agree on every item both voted on
    tuned = browser.find_element(By.CSS_SELECTOR, "#win-rates tr[data-model='tuned']")
    rate = float(tuned.find_element(By.CLASS_NAME, "win-rate").text)
    low, high = (
        float(x) for x in re.findall(r"[\d.]+", tuned.find_element(By.CLASS_NAME, "interval").text)
    )
    assert rate == 1.0 and low <= rate <= high, (rate, low, high)
    if os.environ.get("KUBETUNE_STUDIO_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["KUBETUNE_STUDIO_SCREENSHOTS"]) / "admin.png"))
    admin.close()
