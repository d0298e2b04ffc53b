"""gradbench's core: Problem, capabilities, parameter specs, the estimator and suite registries,
plugins, moments and seeding. No pandas, no CLI: numerical code raises ValueError/TypeError."""
