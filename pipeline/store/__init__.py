"""The sharded, resumable prior store (DESIGN.md section 3, "Prior store").

Modules: ``layout`` (file names, index files, part metadata), ``rows`` (:class:`PriorRows`,
the batches a teacher writes, their checks, and the part's arrays), ``lock`` (the per-part
``flock`` that keeps a second writer out), ``writer`` (:class:`PriorWriter`, one per part),
``reader`` (:class:`PriorStore`, read-only over every part) and ``integrity`` (what
:meth:`PriorStore.verify` checks). The statuses and keys are in :mod:`pipeline.contract`.

Layout under a store folder (``data/priors/``), one part per writer process::

    part-00000.zarr/            Zarr v3 group; attributes: teacher config + hash, size, versions
        prob    (N, S, S) float16  soft foreground probability, square-stretched image frame
        box     (N, 4)    float32  grounding box, XYXY original pixels (NaN: no box)
        point   (N, 2)    float32  grounding point, XY original pixels (NaN: no point)
        status  (N,)      int8     :class:`pipeline.contract.PriorStatus`
        key     (N,)      string   :func:`pipeline.contract.prior_key` of the pair
    part-00000.index.parquet    key, row, sample_id, status: the rows that are durable

Exactly one :class:`PriorWriter` owns a part: two processes writing one shard lose rows
silently, and concurrent resizes of one array race on its metadata. ``prob`` has chunks of
one row (a random read decodes one prior) inside shards of ``shard_rows`` rows (one file per
shard, not per pair). The small per-row arrays use plain chunks of ``shard_rows`` rows: a
one-row chunk of an int8 would cost more in shard-index bytes than in data.

Durability: the writer buffers rows, writes whole shards, fsyncs them, and only then
atomically replaces the index. A crash loses at most the buffered rows; the index never
names a row whose bytes are not on disk. ``prob`` is filled with NaN, so a row that the
arrays lack reads as non-finite and :meth:`PriorStore.verify` reports it.

Reading: :class:`PriorStore` merges the part indexes into sorted numpy arrays (no per-key
Python objects, so DataLoader workers forked after :meth:`PriorStore.open` share them
copy-on-write without touching refcounts) and opens the Zarr arrays lazily per process.
"""
