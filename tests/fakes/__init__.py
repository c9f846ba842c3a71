"""Fakes of outside services, served over real sockets so that other processes can use them."""
