"""The engine, apart from the checks: the result type (`result`), which checks run in which stage
(`registry`, the one module here that imports the stage folders), the one runner (`runner`, with
`forked_stage`), the one training gate (`gate`) and running + recording a preflight (`preflight`)."""
