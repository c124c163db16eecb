"""The sharding steps of the inference stages (split, merge_scored, merge_healed): not
stages of the defense, the plumbing that runs classify and heal once per shard."""
