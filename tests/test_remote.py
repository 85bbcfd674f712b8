"""The remote cache against a real S3 API on 127.0.0.1 (moto's server) and on a shared directory.

One pipeline run fills a local store and pushes it; every test then works on its own prefix.
Nothing here reaches an address outside this machine: the S3 endpoint is the local server and the
AWS credential chain ends at fixed environment variables.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_MODEL, SMALL_PIPELINE, Project, artifact_digests, stage_status

pytest.importorskip("s3fs")
pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

BUCKET = "orchestrate-cache"
STAGES = ("capture", "export", "build", "verify", "bench")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment that points S3 clients at it."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("aws")
    environment = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **environment})
    saved = {key: os.environ.get(key) for key in environment}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        os.environ.update(environment)  # for boto3 and s3fs inside this process too
        _client(endpoint).create_bucket(Bucket=BUCKET)
        yield {**environment, "endpoint": endpoint}
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _env(s3: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in s3.items() if k != "endpoint"}


def _prefix() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def _objects(s3: dict[str, str], url: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix, by key relative to it."""
    client = _client(s3["endpoint"])
    prefix = url.split(f"s3://{BUCKET}/", 1)[1] + "/"
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix):]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


@pytest.fixture(scope="module")
def built(s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The small pipeline with cache.remote on S3, run once: a local store, and the prefix it pushed to."""
    project = Project(tmp_path_factory.mktemp("built"))
    url = _prefix()
    pipeline = project.write("small.yaml", SMALL_PIPELINE.format(model=SMALL_MODEL)
                             + f"cache:\n  remote: {url}\n")
    result = project.run("run", str(pipeline), env=_env(s3))
    assert result.code == 0, result.text
    assert set(stage_status(result.out).values()) <= {"ran", "passed"}, result.out
    return {"project": project, "pipeline": pipeline, "url": url, "store": project.store}


def test_a_second_store_pulls_what_the_first_pushed(s3: dict[str, str], built: dict[str, Any],
                                                    tmp_path: Path) -> None:
    objects = _objects(s3, built["url"])
    manifests = [name for name in objects if name.endswith("/manifest.json")]
    assert len(manifests) == 5 and all(name.startswith("v1/") for name in objects)
    assert not [name for name in objects if "/.tmp/" in name]

    second = Project(tmp_path)
    result = second.run("run", str(built["pipeline"]), env=_env(s3))
    assert result.code == 0, result.text
    assert stage_status(result.out) == dict.fromkeys(STAGES, "pulled"), result.out
    assert f"nothing ran: 5 pulled from {built['url']}, the rest cached" in result.out
    # byte for byte the artifacts that were pushed
    assert artifact_digests(second.store) == artifact_digests(built["store"])

    # A fully cached run does not contact the remote: here its endpoint is a closed port. (--remote keeps the
    # run off the no-op fast path, which reads nothing remote either.)
    offline = {**_env(s3), "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    cached = second.run("run", str(built["pipeline"]), "--remote", built["url"], env=offline)
    assert cached.code == 0 and "nothing to do: all 5 stages cached" in cached.out, cached.text
    assert "warning" not in cached.text

    # Remote settings are in no key: the same pipeline without a cache section is fully cached here.
    bare = second.write("bare.yaml", SMALL_PIPELINE.format(model=SMALL_MODEL))
    again = second.run("run", str(bare), env={**_env(s3), "ORCHESTRATE_REMOTE": "off"})
    assert again.code == 0 and "nothing to do: all 5 stages cached" in again.out, again.text


def test_a_corrupted_remote_object_is_ignored_reported_and_rebuilt(s3: dict[str, str], built: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    url = _prefix()
    pushed = built["project"].run("push", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert pushed.code == 0 and "5 pushed" in pushed.out, pushed.text

    # Flip bytes of the build's largest file in the bucket, keeping its size.
    build_manifest = json.loads(next(built["store"].glob("build/*/manifest.json")).read_text())
    name, meta = max(build_manifest["files"].items(), key=lambda item: item[1]["size"])
    key = f"{url.split(f's3://{BUCKET}/', 1)[1]}/v1/blobs/{meta['digest'][:2]}/{meta['digest']}"
    client = _client(s3["endpoint"])
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))

    third = Project(tmp_path / "third")
    pulled = third.run("pull", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert pulled.code == 1, pulled.text
    assert stage_status(pulled.out)["build"] == "rejected"
    assert f"{name} does not match its digest" in pulled.out
    assert not list(third.store.glob("build/*/manifest.json"))  # nothing of the bad copy is kept

    ran = third.run("run", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert ran.code == 0, ran.text
    status = stage_status(ran.out)
    assert status["build"] == "ran", ran.out
    assert f"warning: remote copy in {url} ignored, running here: {name} does not match its digest" in ran.out
    assert artifact_digests(third.store).keys() == artifact_digests(built["store"]).keys()

    # The run that rebuilt it pushed a good copy over the damaged one.
    fourth = Project(tmp_path / "fourth")
    repaired = fourth.run("pull", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert repaired.code == 0 and "5 pulled" in repaired.out, repaired.text


def test_a_half_uploaded_artifact_is_invisible(s3: dict[str, str], built: dict[str, Any], tmp_path: Path) -> None:
    """Blobs without their manifest (a pusher killed before publishing) are never read."""
    url = _prefix()
    prefix = url.split(f"s3://{BUCKET}/", 1)[1]
    client = _client(s3["endpoint"])
    for manifest in built["store"].glob("*/*/manifest.json"):
        for relative, meta in json.loads(manifest.read_text())["files"].items():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/v1/blobs/{meta['digest'][:2]}/{meta['digest']}",
                              Body=(manifest.parent / relative).read_bytes())
    other = Project(tmp_path)
    pulled = other.run("pull", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert pulled.code == 0, pulled.text
    assert stage_status(pulled.out) == dict.fromkeys(STAGES, "absent")
    assert "0 pulled" in pulled.out and not list(other.store.glob("*/*/manifest.json"))


def _push_rounds(store: str, url: str, options: dict[str, str], barrier: Any, rounds: int) -> None:
    """One of two racing pushers: every artifact of `store`, uploading every file each time."""
    from orchestrator.store.remote import Remote
    from orchestrator.store.store import Store

    local = Store(store)
    remote = Remote(url, options)
    artifacts = [local.get(kind, key) for kind, key, _ in local.artifacts()]
    for _ in range(rounds):
        barrier.wait(timeout=60)
        for artifact in artifacts:
            assert artifact is not None
            remote.push(artifact, replace=True)


def test_two_concurrent_pushers_of_the_same_keys(s3: dict[str, str], built: dict[str, Any], tmp_path: Path) -> None:
    # Two stores with the same keys; their bench artifacts differ (timings), so do their manifests.
    other = tmp_path / "other"
    shutil.copytree(built["store"], other)
    project = built["project"]
    rerun = project.run("run", str(built["pipeline"]), "--force", "bench", "--remote", "off",
                        env={**_env(s3), "ORCHESTRATE_STORE": str(other)})
    assert rerun.code == 0, rerun.text
    benches = {name: files for name, files in artifact_digests(built["store"]).items() if name.startswith("bench/")}
    other_benches = {name: files for name, files in artifact_digests(other).items() if name.startswith("bench/")}
    assert benches.keys() == other_benches.keys() and benches != other_benches

    url = _prefix()
    options = {"endpoint_url": s3["endpoint"]}  # explicit storage options, as cache.options passes them
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    pushers = [context.Process(target=_push_rounds, args=(str(store), url, options, barrier, 3))
               for store in (built["store"], other)]
    for pusher in pushers:
        pusher.start()
    for pusher in pushers:
        pusher.join(timeout=300)
    assert [p.exitcode for p in pushers] == [0, 0]

    reader = Project(tmp_path / "reader")
    pulled = reader.run("pull", str(built["pipeline"]), "--remote", url, env=_env(s3))
    assert pulled.code == 0 and "5 pulled" in pulled.out, pulled.text
    result = artifact_digests(reader.store)
    for name, files in result.items():
        if name.startswith("bench/"):
            assert files in (benches[name], other_benches[name])  # one pusher's complete artifact
        else:
            assert files == artifact_digests(built["store"])[name]


def test_push_and_pull_by_pipeline_through_a_shared_directory(project: Project, tmp_path: Path) -> None:
    """A plain path relative to the pipeline file is a shared-filesystem remote."""
    pipeline = project.write("small.yaml", SMALL_PIPELINE.format(model=SMALL_MODEL) + "cache:\n  remote: shared\n")
    shared = project.root / "shared"
    built = project.run("run", str(pipeline), env={"ORCHESTRATE_REMOTE": "off"})
    assert built.code == 0, built.text
    assert not shared.exists()  # 'off' overrides the pipeline's cache.remote

    pushed = project.run("push", str(pipeline))
    assert pushed.code == 0, pushed.text
    assert stage_status(pushed.out) == dict.fromkeys(STAGES, "pushed")
    assert "5 pushed" in pushed.out
    again = project.run("push", str(pipeline))
    assert stage_status(again.out) == dict.fromkeys(STAGES, "present")
    assert not list((shared / "v1" / ".tmp").iterdir())  # no upload left under a temporary name

    elsewhere = tmp_path / "elsewhere"
    pulled = project.run("pull", str(pipeline), env={"ORCHESTRATE_STORE": str(elsewhere)})
    assert pulled.code == 0 and stage_status(pulled.out) == dict.fromkeys(STAGES, "pulled"), pulled.text
    assert artifact_digests(elsewhere) == artifact_digests(project.store)
    cached = project.run("run", str(pipeline), env={"ORCHESTRATE_STORE": str(elsewhere)})
    assert cached.code == 0 and "nothing to do: all 5 stages cached" in cached.out, cached.text

    # A stage's inputs that a worker's store lacks come from the remote cache.
    from orchestrator.errors import UserError
    from orchestrator.store.remote import Remote, configured, localize
    from orchestrator.store.store import Store

    source = Store(project.store)
    verify_key = next(key for kind, key, _ in source.artifacts() if kind == "verify")
    verify = source.get("verify", verify_key)
    assert verify is not None
    inputs = {}
    for role, key in verify.manifest["parts"]["inputs"].items():  # roles are stages here: build, capture
        artifact = source.get(role, key)
        assert artifact is not None
        inputs[role] = artifact
    worker = Store(tmp_path / "worker")
    with pytest.raises(UserError, match="is not in the store"):
        localize(worker, inputs, None)
    local = localize(worker, inputs, Remote(str(shared)))
    assert {role: a.path.parent.parent for role, a in local.items()} == dict.fromkeys(inputs, worker.root)
    assert all(worker.check(a.kind, a.key)[0] is not None for a in local.values())

    # cache.push: false only pulls.
    read_only = configured({"remote": "read-only", "push": False}, tmp_path)
    assert read_only is not None and read_only.url == str(tmp_path / "read-only")
    assert read_only.try_push(verify) is None and not (tmp_path / "read-only").exists()


def test_push_without_a_remote_and_an_unknown_scheme_are_user_errors(project: Project) -> None:
    pipeline = project.small()
    missing = project.run("push", str(pipeline), env={"ORCHESTRATE_REMOTE": ""})
    assert missing.code == 2 and "no remote cache" in missing.err, missing.text
    bad = project.write("bad.yaml", SMALL_PIPELINE.format(model=SMALL_MODEL) + "cache:\n  remote: nosuch://x/y\n")
    result = project.run("run", str(bad))
    assert result.code == 2, result.text
    assert f"{bad}:" in result.err and "cache.remote" in result.err and "unknown filesystem" in result.err
    assert not project.store.exists() or not list(project.store.glob("*/*/manifest.json"))
