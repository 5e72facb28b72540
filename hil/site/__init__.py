"""The lab at site scale, on the grid operator's side: the signals a site is asked to follow and
what dispatches a fleet today (`baseline`), to compare the site controller against."""
