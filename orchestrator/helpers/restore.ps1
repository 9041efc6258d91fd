<#
.SYNOPSIS
    keyfleet restore helper: puts a backed-up SCSM encryption key back with SecureStorageBackup.exe.
.DESCRIPTION
    Run by the keyfleet bootstrap with -Params (file: the key file in base64, sha256, tool_path,
    tool_timeout, expected_computer_name, expected_role) and -Secret (the password the file was
    made with). Verifies the file's SHA-256, refuses a server whose computer name or SCSM role
    differs from the expected one (a server not yet set up has no role and is accepted, as
    Microsoft's recovery restores the key before Setup runs), writes the file into a private
    temporary folder (Administrators and SYSTEM only), runs "SecureStorageBackup.exe Restore <file>"
    with the password on its stdin and a hard timeout, and always removes the folder.
    A failure is thrown with its kind in Exception.Data['KeyfleetKind'].
#>
param(
    [Parameter(Mandatory = $true)] [psobject] $Params,
    [Security.SecureString] $Secret
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$HelperVersion = '1.0.0'
$MinimumFreeBytes = 10MB
$MaximumKeyFileBytes = 256KB  # keeps requests under ConvertFrom-Json's 2 MB limit (PowerShell 5.1)
$MaximumOutputChars = 8000
$SetupKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup'
$SdkServiceKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service'
$UninstallEntries = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*'
$KnownToolPaths = @(
    'C:\Program Files\Microsoft System Center\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2022\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2019\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2016\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center 2012 R2\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
)

function Stop-Helper([string] $Kind, [string] $Message) {
    $exception = New-Object System.InvalidOperationException $Message
    $exception.Data['KeyfleetKind'] = $Kind
    throw $exception
}

function Get-Param([string] $Name) {
    $property = $Params.PSObject.Properties[$Name]
    if ($null -eq $property) { return $null }
    return $property.Value
}

function Get-ToolTimeout {
    $value = Get-Param 'tool_timeout'
    if ($null -eq $value) { return 120.0 }
    $seconds = $value -as [double]
    if ($null -eq $seconds -or $seconds -le 0) { Stop-Helper 'remote' "tool_timeout must be a positive number of seconds, not '$value'" }
    return $seconds
}

function Test-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Get-RegistryValue([string] $Path, [string] $Name) {
    $item = Get-ItemProperty -LiteralPath $Path -ErrorAction SilentlyContinue
    if ($null -eq $item -or $null -eq $item.PSObject.Properties[$Name]) { return $null }
    return $item.$Name
}

function Get-ScsmRole {
    switch (Get-RegistryValue $SdkServiceKey 'SDK Service Type') {
        1 { return 'management_server' }
        2 { return 'dw_management_server' }
    }
    if ($null -ne (Get-RegistryValue $SetupKey 'PortalVirtualDirectory')) { return 'self_service_portal' }
    return $null
}

function Get-ScsmVersion {
    $best = $null
    foreach ($entry in @(Get-ItemProperty -Path $UninstallEntries -ErrorAction SilentlyContinue)) {
        $properties = $entry.PSObject.Properties
        if ($null -eq $properties['DisplayName'] -or $null -eq $properties['DisplayVersion']) { continue }
        if ([string]$entry.DisplayName -notlike '*Service Manager*') { continue }
        $parsed = $null
        if ([version]::TryParse([string]$entry.DisplayVersion, [ref]$parsed) -and ($null -eq $best -or $parsed -gt $best)) {
            $best = $parsed
        }
    }
    if ($null -eq $best) { return $null }
    return $best.ToString()
}

function Find-Tool {
    $configured = Get-Param 'tool_path'
    if ($configured) {
        if (Test-Path -LiteralPath $configured -PathType Leaf) { return [string]$configured }
        return $null
    }
    $candidates = @()
    $installDirectory = Get-RegistryValue $SetupKey 'InstallDirectory'
    if ($installDirectory) { $candidates += Join-Path $installDirectory 'Tools\SecureStorageBackup\SecureStorageBackup.exe' }
    foreach ($candidate in $candidates + $KnownToolPaths) {
        if (Test-Path -LiteralPath $candidate -PathType Leaf) { return $candidate }
    }
    return $null
}

function New-PrivateFolder {
    $root = [IO.Path]::GetTempPath()
    $drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($root))
    if ($drive.AvailableFreeSpace -lt $MinimumFreeBytes) {
        Stop-Helper 'disk-full' ('only {0} bytes free on {1} (temporary folder {2}); at least {3} needed' -f $drive.AvailableFreeSpace, $drive.Name, $root, $MinimumFreeBytes)
    }
    $security = New-Object Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    $inherit = [Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    foreach ($sid in 'S-1-5-32-544', 'S-1-5-18') {
        $identity = New-Object Security.Principal.SecurityIdentifier $sid
        $rule = New-Object Security.AccessControl.FileSystemAccessRule($identity, 'FullControl', $inherit, 'None', 'Allow')
        $security.AddAccessRule($rule)
    }
    $path = Join-Path $root ('keyfleet-' + [guid]::NewGuid().ToString('N'))
    [IO.Directory]::CreateDirectory($path, $security) | Out-Null
    return $path
}

function Get-Sha256Hex([byte[]] $Bytes) {
    $sha256 = [Security.Cryptography.SHA256]::Create()
    try { return -join ($sha256.ComputeHash($Bytes) | ForEach-Object { $_.ToString('x2') }) }
    finally { $sha256.Dispose() }
}

function Send-Password([IO.StreamWriter] $Writer) {
    $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($Secret)
    try {
        $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)
        # the wizard asks twice: Password, Confirm Password
        $Writer.WriteLine($plain)
        $Writer.WriteLine($plain)
        $Writer.Close()
    }
    catch [IO.IOException] {
        # the tool exited or closed its stdin early: its exit code and output say why
        $Writer.Dispose()
    }
    finally {
        $plain = $null
        [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr)
    }
}

function Invoke-Tool([string] $ToolPath, [string] $Verb, [string] $KeyFile, [double] $TimeoutSeconds) {
    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = $ToolPath
    $info.Arguments = '{0} "{1}"' -f $Verb, $KeyFile
    $info.WorkingDirectory = Split-Path -Parent $KeyFile
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $process = [Diagnostics.Process]::Start($info)
    try {
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
        Send-Password $process.StandardInput
        if (-not $process.WaitForExit([int][Math]::Ceiling($TimeoutSeconds * 1000))) {
            $process.Kill()
            $process.WaitForExit()
            Stop-Helper 'tool-timeout' ('SecureStorageBackup.exe did not finish within {0} s and was stopped; it may be waiting for interactive input (a wizard page needs a desktop session). Run it once by hand on this server, or raise tool_timeout.' -f $TimeoutSeconds)
        }
        $process.WaitForExit()
        $output = ($stdout.Result + $stderr.Result).Trim()
        if ($output.Length -gt $MaximumOutputChars) { $output = $output.Substring(0, $MaximumOutputChars) + '...' }
        return @{ exit = $process.ExitCode; output = $output }
    }
    finally {
        $process.Dispose()
    }
}

if (-not (Test-Administrator)) {
    Stop-Helper 'not-admin' "$env:USERDOMAIN\$env:USERNAME is not a local administrator; SecureStorageBackup.exe needs administrator rights"
}
if ($null -eq $Secret -or $Secret.Length -eq 0) { Stop-Helper 'remote' 'no password for the key file was given' }
$timeout = Get-ToolTimeout
$encoded = Get-Param 'file'
if (-not $encoded) { Stop-Helper 'protocol' 'the request holds no key file' }
try { $bytes = [Convert]::FromBase64String([string]$encoded) }
catch [FormatException] { Stop-Helper 'protocol' 'the key file in the request is not valid base64' }
if ($bytes.Length -gt $MaximumKeyFileBytes) { Stop-Helper 'protocol' "the key file in the request is larger than $MaximumKeyFileBytes bytes" }
$sha256 = Get-Sha256Hex $bytes
if ($sha256 -ne [string](Get-Param 'sha256')) {
    Stop-Helper 'integrity' 'the key file received does not match its SHA-256; nothing was restored'
}
$expectedName = Get-Param 'expected_computer_name'
if ($expectedName) {
    $expectedName = ([string]$expectedName).Split('.')[0]
    if ($expectedName -ne $env:COMPUTERNAME) {
        Stop-Helper 'name-mismatch' "this server is $env:COMPUTERNAME but the key file belongs to ${expectedName}: a key can only be restored onto a server with the same computer name"
    }
}
$role = Get-ScsmRole
$expectedRole = Get-Param 'expected_role'
if ($expectedRole -and $role -and $role -ne $expectedRole) {
    Stop-Helper 'role-mismatch' "this server is a $role but the key file belongs to a $expectedRole"
}
$version = Get-ScsmVersion
$tool = Find-Tool
if ($null -eq $tool) {
    Stop-Helper 'tool-missing' 'SecureStorageBackup.exe not found: copy Tools\SecureStorageBackup from the Service Manager installation media to this server and set tool_path (or install it in a known location)'
}
$folder = New-PrivateFolder
try {
    $keyFile = Join-Path $folder 'SMBackupkey.bin'
    try { [IO.File]::WriteAllBytes($keyFile, $bytes) }
    catch [IO.IOException] {
        $cause = $_.Exception.GetBaseException()
        # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
        if ($cause.HResult -in @(-2147024857, -2147024784)) { Stop-Helper 'disk-full' $cause.Message }
        throw
    }
    $run = Invoke-Tool $tool 'Restore' $keyFile $timeout
    if ($run.exit -ne 0) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Restore exited with code {0}: {1}' -f $run.exit, $run.output)
    }
    return @{
        sha256         = $sha256
        role           = $role
        version        = $version
        tool_path      = $tool
        tool_exit      = $run.exit
        tool_output    = $run.output
        computer_name  = $env:COMPUTERNAME
        helper_version = $HelperVersion
    }
}
finally {
    Remove-Item -LiteralPath $folder -Recurse -Force
}
