"""The home side: the agent on the home's MQTT broker (the one Home Assistant uses).

`link` is the connection (its own network thread, a Will that marks the device offline);
`discovery` the Home Assistant device-discovery config and the JSON state it reads; `meter` reads
the home meter's power from whatever shape the meter publishes; `surplus` turns that into the
load to hold; `target` decides what the governor is asked while no signed grid command is in
charge; `session` runs them on the control thread. Unsigned local commands exist only when the
owner enables them (`[home] local_control`), and a signed grid command always wins.
"""
