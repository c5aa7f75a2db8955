"""One example of every message: shown in the OpenAPI document, checked by the tests."""

from __future__ import annotations

from typing import Any

from federated.protocol import exports as ex
from federated.protocol import messages as m
from federated.protocol import standings as st

_KEY = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
_SIG = "q" * 86 + "=="
_DIGEST = "3f" * 32
_PAYLOAD = "9a" * 32
_PARENT = "2e" * 32
_PARENT_MANIFEST = "7d" * 32
_ROOT = "b1" * 32
_TASK = "tK4v1b0xQ2m8c1wZ9rA3"
_CLIENT = "cL7n2p9qR4s6t8u0v1w2"

_PROJECT = m.Project(
    name="digits",
    description="Handwritten digits, 8x8.",
    recipe="digits-mlp",
    recipe_version=1,
    hparams={"lr": 0.05, "batch_size": 32, "max_steps": 40},
    data_mode="builtin",
    strategy={"name": "fedavg"},
    mode="sync",
    status="open",
    current_version=3,
    model_digest=_DIGEST,
    public_key=_KEY,
    key_fingerprint="ab12:cd34:ef56:7890",
    invite_required=False,
    codec="int8",
    page_url="/p/digits",
)

_ACTION = st.OrganiserAction(
    id=1,
    at=1764220100,
    action="ban",
    target="mL4l0ry7n2p9qR4s6t8u",
    reason="sent the same update under three names",
    detail="banned; revoked 37.5 GFLOP of 3 updates, withheld 12.5 GFLOP of 1, "
    "set aside 1 update not aggregated yet, ended 1 lease",
)

EXAMPLES: dict[type[Any], Any] = {
    m.ErrorBody: m.ErrorBody(
        error=m.ErrorDetail(code="unknown_project", message="no project named 'digts'")
    ),
    m.Health: m.Health(status="ok"),
    m.ProjectSummary: m.ProjectSummary(name="digits", recipe="digits-mlp", page_url="/p/digits"),
    m.ProjectList: m.ProjectList(projects=[m.ProjectSummary(name="digits", recipe="digits-mlp")]),
    m.Project: _PROJECT,
    m.Challenge: m.Challenge(challenge="c" * 43 + "=", expires_at=1764220300),
    m.JoinRequest: m.JoinRequest(
        display_name="Ada",
        team="Analytical Engines",
        public_key=_KEY,
        challenge="c" * 43 + "=",
        signature=_SIG,
    ),
    m.JoinResponse: m.JoinResponse(
        client_id=_CLIENT, token=f"{_CLIENT}.s3cr3t-token-shown-once", project=_PROJECT
    ),
    m.TaskManifest: m.TaskManifest(
        task_id=_TASK,
        project="digits",
        client_id=_CLIENT,
        base_version=3,
        base_digest=_DIGEST,
        recipe="digits-mlp",
        recipe_version=1,
        hparams={"lr": 0.05, "batch_size": 32, "max_steps": 40},
        shard_index=7,
        max_examples=180,
        codec="int8",
        max_update_norm=100.0,
        max_payload_bytes=64 * 1024 * 1024,
        issued_at=1764220000,
        deadline=1764220300,
        useful_until=1764220140,
    ),
    m.Heartbeat: m.Heartbeat(deadline=1764220600),
    m.UpdateManifest: m.UpdateManifest(
        project="digits",
        task_id=_TASK,
        client_id=_CLIENT,
        base_digest=_DIGEST,
        payload_digest=_PAYLOAD,
        codec="int8",
        num_examples=180,
        metrics={"loss_before": 2.3, "loss_after": 0.4, "seconds": 1.2},
        energy_joules=41.5,
        energy_method="rapl",
    ),
    m.Receipt: m.Receipt(
        update_id="uP3d4t3Id0000001",
        task_id=_TASK,
        payload_digest=_PAYLOAD,
        accepted_at=1764220001,
        credit=12.5,
    ),
    m.UploadProgress: m.UploadProgress(payload_digest=_PAYLOAD, offset=25165824, length=103325096),
    st.UpdateStatus: st.UpdateStatus(
        update_id="uP3d4t3Id0000001",
        task_id=_TASK,
        status="rejected",
        credit=12.5,
        credit_state="withheld",
        verdict="norm_outlier",
        detail="its L2 norm 41.2 is over 8 x the median 1.37 of the 3 updates aggregated with it",
    ),
    m.ModelManifest: m.ModelManifest(
        project="digits",
        version=3,
        digest=_DIGEST,
        created_at=1764220000,
        parent_digest=_PARENT,
        parent_manifest_digest=_PARENT_MANIFEST,
        updates_root=_ROOT,
        updates=3,
    ),
    m.InclusionProof: m.InclusionProof(
        project="digits",
        version=3,
        update_id="uP3d4t3Id0000001",
        payload_digest=_PAYLOAD,
        index=1,
        size=3,
        path=["5e" * 32, "c0" * 32],
        updates_root=_ROOT,
    ),
    st.Leaderboard: st.Leaderboard(
        contributors=[
            st.LeaderboardContributor(
                client_id=_CLIENT,
                rank=1,
                name="Ada",
                display_name="Ada",
                team="Analytical Engines",
                credit=120.5,
                updates_accepted=9,
                last_seen=1764220001,
            )
        ],
        teams=[
            st.LeaderboardTeam(
                rank=1,
                name="Analytical Engines",
                team="Analytical Engines",
                members=1,
                credit=120.5,
            )
        ],
    ),
    st.Stats: st.Stats(
        project="digits",
        current_version=1,
        versions=[
            st.VersionStats(
                version=1,
                digest=_DIGEST,
                created_at=1764220000,
                metrics={"accuracy": 0.91, "loss": 0.3},
                updates=3,
                contributors=3,
                parent_digest=_PARENT,
                parent_manifest_digest=_PARENT_MANIFEST,
                updates_root=_ROOT,
            )
        ],
        contributors=3,
        updates_accepted=3,
        total_credit=37.5,
        live_leases=2,
        actions=[_ACTION],
    ),
    st.Me: st.Me(
        client_id=_CLIENT,
        name="Ada",
        display_name="Ada",
        credit=120.5,
        updates_accepted=9,
        updates_rejected=0,
        rank=1,
        last_seen=1764220001,
    ),
    st.OrganiserAction: _ACTION,
}
EXAMPLES[ex.UsersExport] = ex.UsersExport(
    project="digits",
    generated_at=1764220000,
    users=[
        ex.ExportUser(
            id=_CLIENT,
            name="Ada",
            team="Analytical Engines",
            total_credit=120.5,
            recent_credit=30.25,
            updates_accepted=9,
            first_seen=1764200000,
            last_seen=1764220001,
            rank=1,
        )
    ],
)
EXAMPLES[ex.TeamsExport] = ex.TeamsExport(
    project="digits",
    generated_at=1764220000,
    teams=[
        ex.ExportTeam(
            name="Analytical Engines",
            members=1,
            member_ids=[_CLIENT],
            total_credit=120.5,
            recent_credit=30.25,
            updates_accepted=9,
            rank=1,
        )
    ],
)
EXAMPLES[m.SignedTask] = m.SignedTask(manifest=EXAMPLES[m.TaskManifest], signature=_SIG)
EXAMPLES[m.SignedModel] = m.SignedModel(manifest=EXAMPLES[m.ModelManifest], signature=_SIG)
