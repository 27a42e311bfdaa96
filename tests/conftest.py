"""Shared fixtures. Models load from local folders only; nothing may reach a hub."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

# System tests that time something against a bound (a re-plan within 3 s, a connect within the
# timeout, a paced byte rate, a plan's latency against none, a SIGTERM's grace) or measure a process's
# memory: scripts/test runs them alone, after the others, which it runs in parallel workers. A timing
# taken while another test holds the cores would be a measure of that test. A file maps to ALL when
# every test in it times something, else to the names of those that do; the others in it run in
# parallel (a module fixture they share then starts once in each session).
ALL = None
TIMED_TESTS = {
    "test_channel_cli.py": ALL, "test_channel_tc.py": ALL, "test_closed_loop.py": ALL, "test_faults.py": ALL,
    "test_plan_switch.py": ALL, "test_planner_defaults.py": ALL, "test_shutdown.py": ALL,
    "test_hygiene.py": {"test_timeout_bounds_connecting_when_nothing_listens",
                        "test_timeout_bounds_connecting_to_a_blackholed_address",
                        "test_unreachable_through_the_channel_emulator_points_at_its_upstream"},
    "test_server_trust.py": {"test_idle_streams_hold_no_thread_health_info_and_infer_still_answer",
                             "test_streams_beyond_the_limit_are_refused_not_hung",
                             "test_amplifying_tensors_are_refused_before_allocation_and_memory_stays_flat",
                             "test_requests_whose_callers_left_are_never_computed"},
    "test_status.py": {"test_nothing_listening_is_a_clear_error_within_the_timeout",
                       "test_blackholed_address_is_a_clear_error_within_the_timeout"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent.name != "system" or item.path.name not in TIMED_TESTS:
            continue
        names = TIMED_TESTS[item.path.name]
        if names is ALL or item.originalname in names:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session", autouse=True)
def quality_cache(tmp_path_factory):
    """One quality-profile cache for the whole session (planners started by tests inherit it): a model
    is profiled once per run, never read from or written to the user's ~/.cache. scripts/test runs the
    unit tests (in parallel workers) and the system tests as separate sessions over one folder,
    COINFER_TEST_CACHE_DIR, so that they too profile each model once."""
    shared = os.environ.get("COINFER_TEST_CACHE_DIR")
    folder = Path(shared) if shared else tmp_path_factory.mktemp("quality-cache")
    folder.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("COINFER_CACHE_DIR")
    os.environ["COINFER_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("COINFER_CACHE_DIR", None)
    else:
        os.environ["COINFER_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def minilm_quality(minilm, quality_cache):
    """all-MiniLM-L6-v2's measured quality model (profiled once per session, shared with subprocesses)."""
    import fcntl

    from coinfer.planner.quality import load_or_measure

    # parallel workers wait for the one that profiles, then read its cache file
    with open(quality_cache / ".profiling.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return load_or_measure(minilm)


@pytest.fixture(scope="session")
def minilm():
    from coinfer.models import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="session")
def tiny_bert():
    from coinfer.models import resolve_model

    return resolve_model("random:bert-tiny")


@pytest.fixture(scope="session")
def tiny_bart():
    from coinfer.models import resolve_model

    return resolve_model("random:bart-tiny")


@pytest.fixture(scope="session")
def minilm_sentence_transformer():
    """The embedded all-MiniLM-L6-v2 as sentence-transformers runs it whole: the reference answer."""
    from sentence_transformers import SentenceTransformer

    from coinfer.models import embedded_model_path

    return SentenceTransformer(str(embedded_model_path()), device="cpu")


SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "Short one.",
]


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)


@pytest.fixture(scope="session")
def split_servers():
    """`coinfer server` processes for the API and HTTP tests, shared by both (each takes seconds to
    start): MiniLM at k = 0, 2, L (6) and random:bart-tiny at k = 2, started side by side. Tests only
    send them requests; none may stop them."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from embeddings import start_server

    specs = {0: ("minilm", 0), 2: ("minilm", 2), 6: ("minilm", 6), "bart": ("random:bart-tiny", 2)}
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(specs)) as pool:
        futures = {key: pool.submit(start_server, model, k, "shared") for key, (model, k) in specs.items()}
        started = {key: stack.enter_context(f.result()) for key, f in futures.items() if f.exception() is None}
        for future in futures.values():
            future.result()  # the first that failed to start fails the tests (the others are stopped)
        yield started
