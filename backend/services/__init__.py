"""The coordinator's operations, one module per job, none of them aware of HTTP.

    context      ServiceContext: store, blobs, keys, clock, metrics, notifier, runtimes
    projects     create, look up, change status, the protocol's Project view
    membership   invites, join challenge, join, bearer-token authentication
    leasing      lease (long poll), heartbeat, release; the lease transaction
    uploads      verify and commit one update; count and record refusals
    aggregation  claim complete rounds, aggregate, publish; the background worker
    standings    leaderboard, stats, a contributor's own row, receipts
    models       the signed current model; tensor helpers for model state
    tasks        task rules leasing and uploads share (ownership, liveness, pace, bans)
    admin        organiser actions: ban, unban, revoke, rollback, each in the action log

Dependencies point one way: context at the bottom, then tasks/models/standings/inputs,
then the services; no service imports ``backend.http``. ``backend.coordinator.Coordinator``
builds them over one data folder.
"""
