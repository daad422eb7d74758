#!/usr/bin/env python
"""Elastic training: how long a change of hosts costs, on three simulated hosts.

One elastic job (``train.elastic: true``, ``horovodrun -np 3 --min-np 2 --max-np 3
--host-discovery-script``) over three namespace hosts (tests/hosts.py: own hostname, sshd and
private disk each; MobileFaceNet + ArcFace on the committed LFW sample, batch 8 per worker, one
worker per host): host 3 is removed from the discovery script's output at step 10, added back 10
steps after the job went on without it, and host 2 is SIGKILLed 10 steps after that
(tests/test_elastic.py's scenario). For each change: seconds from the change to the line saying
the workers went on, and to the first step after it, and the steps done again (the steps finished
after the last commit, which a lost host's failure discards). ``--repeats`` runs the job that many
times and gives each figure's mean and range. Needs root (network namespaces) like the tests.

Prints a Markdown table and one JSON object (also written atomically with --json-out).
"""
import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from recognition.fileio import print_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=90, help="steps of each job")
    p.add_argument("--commit-every", type=int, default=5, help="train.elastic_commit_every")
    p.add_argument("--repeats", type=int, default=1, help="jobs to run")
    p.add_argument("--json-out", help="also write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from hosts import Hosts, unavailable_reason
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"elastic: {reason}")
    from conftest import SAMPLE, train_people
    from recognition.data.pack import pack
    from test_elastic import elastic_scenario
    from tqdm import tqdm

    runs = []
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "src")
        os.makedirs(src)
        for name in train_people():
            os.symlink(os.path.join(SAMPLE, "images", name), os.path.join(src, name))
        rec = os.path.join(work, "rec")
        pack(src, rec, landmarks=os.path.join(SAMPLE, "landmarks.txt"), progress=False)
        with Hosts(3) as hosts:
            for i in range(3):
                copied = hosts.run(i, ["cp", "-r", rec, os.path.join(hosts.disk, "rec")])
                if copied.returncode:
                    raise SystemExit(f"elastic: copying the dataset to host {i + 1}: {copied.stderr.strip()}")
            for k in tqdm(range(args.repeats), desc="elastic jobs", file=sys.stderr):
                seen = elastic_scenario(hosts, args.steps, args.commit_every, run=f"job{k}")
                if seen["returncode"] != 0:
                    raise SystemExit("elastic: the job failed:\n" + seen["log"][-3000:])
                runs.append({"changes": seen["changes"], "steps": seen["results"].get("steps"),
                             "final_world_size": seen["results"].get("world_size")})
    table = []
    for j, first in enumerate(runs[0]["changes"]):
        row = {"change": first["change"], "workers_after": first["workers_after"]}
        for key in ("to_going_on_s", "to_first_step_s", "steps_redone"):
            values = [run["changes"][j][key] for run in runs]
            row[key] = {"mean": round(sum(values) / len(values), 2), "min": min(values), "max": max(values)}
        table.append(row)
    print("| change | workers after | to 'going on' (s) | to first step (s) | steps redone |")
    print("| --- | --- | --- | --- | --- |")
    for row in table:
        cells = [f"{row[k]['mean']:g} ({row[k]['min']:g}-{row[k]['max']:g})" if len(runs) > 1 else f"{row[k]['mean']:g}"
                 for k in ("to_going_on_s", "to_first_step_s", "steps_redone")]
        print(f"| {row['change']} | {row['workers_after']} | " + " | ".join(cells) + " |")
    print_json({"steps": args.steps, "commit_every": args.commit_every, "repeats": args.repeats,
                "changes": table, "runs": runs}, args.json_out, indent=1)


if __name__ == "__main__":
    main()
