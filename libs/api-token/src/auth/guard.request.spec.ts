import { clientAddressOf } from './guard.request';

describe('clientAddressOf (the default client key of failedAttemptLimit)', () => {
  it("is the framework's ip, else the connection's peer address, else none", () => {
    expect(clientAddressOf({ headers: {}, ip: '203.0.113.7', socket: { remoteAddress: '10.0.0.1' } })).toBe('203.0.113.7');
    expect(clientAddressOf({ headers: {}, socket: { remoteAddress: '10.0.0.1' } })).toBe('10.0.0.1');
    expect(clientAddressOf({ headers: {} })).toBeUndefined();
    expect(clientAddressOf({ headers: {}, ip: '' })).toBeUndefined();
  });

  it('never reads a header: a client cannot name itself', () => {
    expect(clientAddressOf({ headers: { 'x-forwarded-for': '198.51.100.1' }, ip: '203.0.113.7' })).toBe('203.0.113.7');
  });
});
