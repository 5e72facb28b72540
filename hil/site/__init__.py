"""The lab at site scale, on the grid operator's side: the signals a site is asked to follow and
what dispatches a fleet today (`baseline`), to compare the site controller against.

A site run (`gridminer hil run site_surplus`): `scenario` (the TOML format of
hil/scenarios/site/), `plan` (its schedule of commands), `parts` (the fleet and site controller
processes, the meter), `runner` (the run), `report` and `plot` (the figures side by side),
`cli` (what `gridminer hil` dispatches here)."""
