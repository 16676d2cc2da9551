"""The menu in a real terminal (tmux) against the local Chutes API: pickers, status, delete, back, quit."""

from __future__ import annotations

import re
import time

import pytest

from tests.api.conftest import DEPLOY

pytestmark = pytest.mark.api

# One menu entry per row of deploy.sh's ACTIONS that has a group (all but --help).
_ACTIONS = re.search(r"^ACTIONS=\((.*?)^\)", DEPLOY.read_text(), re.M | re.S).group(1)
_ENTRIES = re.findall(r'^\s+"[^|"]+\|', _ACTIONS, re.M)
PROMPT = f"Choose 1-{len(_ENTRIES)}, or q:"


def menu(account, terminal):
    term = terminal([str(DEPLOY)], dict(account.env, TERM="xterm"), account.home)
    term.wait_for(PROMPT)
    return term


def entry(term, label: str) -> str:
    return re.search(rf"(\d+)\) {re.escape(label)}", term.screen()).group(1)


def wait_dead(term, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not term.dead():
        assert time.monotonic() < deadline, term.screen()[-2000:]
        time.sleep(0.1)


def test_list_chutes_pick_one_for_status_go_back_and_quit(account, terminal):
    alpha = account.state.add_chute("alpha", hot=True, instances=1)
    account.state.add_chute("beta")
    term = menu(account, terminal)
    term.type(entry(term, "List chutes"))
    term.wait_for("Found 2 matching chutes", timeout=60)
    term.wait_for(PROMPT, count=2)

    term.type(entry(term, "Chute status"))
    screen = term.wait_for("Chutes to show (number, or type a name or id; b back, q quit):", timeout=60)
    assert "Chutes (page 1 of 1, 2 in all):" in screen
    assert re.search(rf"1\) alpha\s+\({alpha['chute_id']}, hot\)", screen)
    term.type("1")
    term.wait_for(f'"chute_id": "{alpha["chute_id"]}"', timeout=60)
    term.wait_for(PROMPT, count=3)

    term.type(entry(term, "Chute status"))
    term.wait_for("Chutes to show", count=2, timeout=60)
    term.type("b")
    screen = term.wait_for(PROMPT, count=4)
    assert "failed" not in screen
    term.type("q")
    wait_dead(term)
    account.assert_no_secret(term.screen())


def test_pickers_page_through_the_api(account, terminal):
    for index in range(13):
        account.state.add_chute(f"chute{index:02d}")
    term = menu(account, terminal)
    term.type(entry(term, "Warm up a chute"))
    screen = term.wait_for("n next page", timeout=60)
    assert "Chutes (page 1 of 2, 13 in all):" in screen and "chute09" in screen and "chute10" not in screen
    term.type("n")
    screen = term.wait_for("Chutes (page 2 of 2, 13 in all):", timeout=60)
    term.wait_for("p previous page")
    term.type("3")  # the third on page 2: chute12
    term.wait_for("chute12 is hot", timeout=60)
    term.wait_for(PROMPT, count=2)
    term.type("q")
    wait_dead(term)


def test_delete_with_a_mistyped_id_returns_to_the_menu_with_nothing_deleted(account, terminal):
    chute = account.state.add_chute("myservice")
    term = menu(account, terminal)
    term.type(entry(term, "Delete a chute"))
    term.wait_for("Chutes to delete", timeout=60)
    term.type(chute["chute_id"][:-1] + "x")  # one character off
    term.wait_for("no chute named or with id", timeout=60)
    term.wait_for("--delete failed (exit 1); back to the menu")
    term.wait_for(PROMPT, count=2)
    assert chute["chute_id"] in account.state.chutes

    term.type(entry(term, "Delete a chute"))
    term.wait_for("Chutes to delete", count=2, timeout=60)
    term.type("1")
    term.wait_for(f"Delete chute myservice (id {chute['chute_id']})? This cannot be undone.", timeout=60)
    term.wait_for("Type the chute's name or id to delete it")
    term.type("myservise")  # a typo in the confirmation
    term.wait_for("'myservise' is neither myservice nor")
    term.wait_for(PROMPT, count=3)
    assert chute["chute_id"] in account.state.chutes
    assert not [r for r in account.state.requests if r[0] == "DELETE"]

    term.type(entry(term, "Delete a chute"))
    term.wait_for("Chutes to delete", count=3, timeout=60)
    term.type("myservice")  # a typed name
    term.wait_for("Type the chute's name or id to delete it", count=2, timeout=60)
    term.type("myservice")
    term.wait_for(f"deleted chute {chute['chute_id']}", timeout=60)
    term.wait_for(PROMPT, count=4)
    assert not account.state.chutes
    term.type("q")
    wait_dead(term)


def test_menu_deploy_asks_fee_public_and_confirmation(account, terminal):
    import uuid

    account.state.add_image("demo-service", "v0.1.0",
                            image_id=str(uuid.uuid5(uuid.NAMESPACE_OID, "testuser/demo-service:v0.1.0")))
    term = menu(account, terminal)
    term.type(entry(term, "Deploy a chute"))
    screen = term.wait_for("Module to deploy (number or name; b back, q quit):")
    term.type(re.search(r"(\d+)\) deploy_example", screen).group(1))
    term.wait_for("Deploying charges a fee to your Chutes balance. Accept it? [y/N]")
    term.type("y")
    term.wait_for("Make the chute public (needs that permission on your account)? [y/N]")
    term.type("")
    term.wait_for("Deploy deploy_example to Chutes now? [y/N]")
    term.type("y")
    term.wait_for("deployed chute demo-service", timeout=120)
    term.wait_for(PROMPT, count=2)
    assert len(account.state.deployed) == 1
    term.type("q")
    wait_dead(term)


def test_keep_warm_from_the_menu_stops_on_ctrl_c_and_returns_to_the_menu(account, terminal):
    chute = account.state.add_chute("myservice")
    term = menu(account, terminal)
    term.type(entry(term, "Keep a chute warm"))
    term.wait_for("Seconds between warmups [300]:")
    term.type("1")
    term.wait_for("Chutes to keep warm", timeout=60)
    term.type("myservice")
    term.wait_for("myservice: hot, 1 instance(s)", timeout=60)
    term.send("C-c")
    term.wait_for("stopped keeping myservice warm after", timeout=30)
    screen = term.wait_for(PROMPT, count=2, timeout=30)
    assert account.state.warmups[chute["chute_id"]] >= 2
    assert "--keep-warm failed" not in screen and "interrupted" not in screen
    term.type("q")
    wait_dead(term)


def test_b_goes_back_from_a_yes_no_question_and_q_quits_from_one(account, terminal):
    term = menu(account, terminal)
    term.type(entry(term, "Deploy a chute"))
    screen = term.wait_for("Module to deploy")
    term.type(re.search(r"(\d+)\) deploy_example", screen).group(1))
    term.wait_for("Accept it? [y/N]")
    term.type("b")
    screen = term.wait_for(PROMPT, count=2)
    assert "failed" not in screen and not account.state.deployed
    term.type(entry(term, "Deploy a chute"))
    screen = term.wait_for("Module to deploy", count=2)
    term.type(re.search(r"(\d+)\) deploy_example", screen).group(1))
    term.wait_for("Accept it? [y/N]", count=2)
    term.type("q")
    wait_dead(term)
    assert not account.state.deployed
