"""What the tools miners already run see of the agent: a read-only HTTP listener with an
AxeOS-compatible API (pyasic, hass-miner, Bitaxe dashboards) and Prometheus metrics.

Everything here reads a `DeviceView` the control thread publishes (`view`); nothing in this
package writes to the chain, the board or the governor. The listener runs on its own thread
(`server`), so no request can hold up the control loop.
"""
